// Per class: the mean rollout over the test images on one colour scale shared by every class
// (so classes compare), and beside it that mean minus the mean over all images (what is
// specific to the class: red more, blue less). Drawn once; it does not follow the selected image. The classes wrap in a box that scrolls past a few rows; with many, a box
// narrows them by name. A click on a class shows its images in the gallery.
function classMeansView(X, parent = X.app) {
  const { C, state, shown } = X;
  const cm = X.section(X.id("class-section"), "Where it looks per class: mean rollout (one scale for all classes) and, beside it, minus the mean over all classes", parent);
  const means = X.doc.class_means, maps = unpack(means.maps), P = X.P;
  const total = means.counts.reduce((a, b) => a + b, 0) || 1;
  const all = Array.from({ length: P }, (_, p) => C.reduce((s, _c, i) => s + means.counts[i] * X.slice(maps, i)[p], 0) / total);
  const kept = C.map((_c, i) => i).filter((i) => means.counts[i]);
  const vals = kept.flatMap((i) => Array.from(X.slice(maps, i)));
  const range = [Math.min(...vals), Math.max(...vals)];
  const diffs = C.map((_c, i) => Array.from(X.slice(maps, i), (v, p) => v - all[p]));
  const reach = Math.max(1e-12, ...kept.flatMap((i) => diffs[i].map(Math.abs)));
  shown.classScale = range; shown.classMeanAll = all;
  const grid = el("div", { class: "class-grid", id: X.id("class-means") });
  const cells = C.map((c, i) => {
    const cv = el("canvas"), dv = el("canvas"), v = X.slice(maps, i), count = means.counts[i];
    if (count) {
      X.draw(cv, null, v, { px: 96, range });
      X.draw(dv, null, diffs[i], { px: 96, range: [-reach, reach], diverge: true });
    } else {
      [cv, dv].forEach((c) => { c.width = c.height = 96; const ctx = c.getContext("2d"); ctx.fillStyle = "#e4e4e4"; ctx.fillRect(0, 0, 96, 96); });
    }
    shown.classMean[i] = v; shown.classDiff = shown.classDiff || {}; shown.classDiff[i] = diffs[i];
    const cell = el("div", { class: "cell" + (count ? "" : " empty"), "data-testid": "class-mean", "data-class": i,
                             title: `${c}: ${count ? "click to show its images in the gallery" : "no test image in the mean"}` },
      el("div", { class: "pair-maps" }, cv, dv), el("div", { class: "name", text: `${c} (n=${count})` }));
    cell.onclick = () => { state.cls = String(i); X.renderAll(); document.getElementById("gallery-section").scrollIntoView(); };
    grid.append(cell);
    return [c.toLowerCase(), cell];
  });
  if (C.length > 12) {
    const count = el("span", { class: "muted", id: X.id("class-mean-count") });
    const find = el("input", { type: "search", id: X.id("class-mean-find"), "data-testid": X.id("class-mean-find"), size: 14,
                               placeholder: `find a class (${C.length})`, "aria-label": "find a class mean by name" });
    find.oninput = () => {
      const q = find.value.trim().toLowerCase();
      let kept = 0;
      cells.forEach(([name, cell]) => { const keep = name.includes(q); cell.hidden = !keep; kept += keep; });
      count.textContent = `${kept} of ${C.length} classes`;
    };
    find.oninput();
    cm.append(el("div", { class: "controls" }, find, count,
      el("span", { class: "muted", text: "click a class: its images in the gallery" })));
  }
  cm.append(grid);
}
