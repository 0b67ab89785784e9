// Per class: the mean rollout over the test images, drawn once (it does not follow the
// selected image). The classes wrap in a box that scrolls past a few rows; with many, a box
// narrows them by name. A click on a class shows its images in the gallery.
function classMeansView(X) {
  const { C, state, shown } = X;
  const cm = X.section("class-section", "Where it looks per class: mean rollout over the test images (colours stretched min to max)");
  const means = X.doc.class_means, maps = unpack(means.maps);
  const grid = el("div", { class: "class-grid", id: "class-means" });
  const cells = C.map((c, i) => {
    const cv = el("canvas"), v = X.slice(maps, i), count = means.counts[i];
    if (count) X.draw(cv, null, v, { px: 96, stretch: true });
    else { cv.width = cv.height = 96; const ctx = cv.getContext("2d"); ctx.fillStyle = "#e4e4e4"; ctx.fillRect(0, 0, 96, 96); }
    shown.classMean[i] = v;
    const cell = el("div", { class: "cell" + (count ? "" : " empty"), "data-testid": "class-mean", "data-class": i,
                             title: `${c}: ${count ? "click to show its images in the gallery" : "no test image in the mean"}` },
      cv, el("div", { class: "name", text: `${c} (n=${count})` }));
    cell.onclick = () => { state.cls = String(i); X.renderAll(); document.getElementById("gallery-section").scrollIntoView(); };
    grid.append(cell);
    return [c.toLowerCase(), cell];
  });
  if (C.length > 12) {
    const count = el("span", { class: "muted", id: "class-mean-count" });
    const find = el("input", { type: "search", id: "class-mean-find", "data-testid": "class-mean-find", size: 14,
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
