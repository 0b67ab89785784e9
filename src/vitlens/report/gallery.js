// The gallery: every image, filtered by class and by right or wrong; a click selects one.
function galleryView(X) {
  const { I, C, n, state, shown, select } = X;
  const gal = X.section("gallery-section", "Images");
  const labelled = I.truth.some((t) => t !== null);
  const classOpts = [["all", "all classes"], ...C.map((c, i) => [String(i), c])];
  gal.append(el("div", { class: "controls" },
    select("filter-class", classOpts, "all", (v) => { state.cls = v; render(); }),
    ...(labelled ? [select("filter-correct", [["all", "right and wrong"], ["right", "right only"], ["wrong", "mistakes only"]],
      "all", (v) => { state.correct = v; render(); })] : []),
    el("span", { class: "muted", id: "gallery-count" })));
  const grid = el("div", { id: "gallery" });
  gal.append(grid);
  const wrong = (k) => I.truth[k] !== null && I.truth[k] !== I.pred[k];
  function render() {
    grid.textContent = "";
    const vis = [];
    for (let k = 0; k < n; k++) {
      const cls = I.truth[k] !== null ? I.truth[k] : I.pred[k];
      if (state.cls !== "all" && cls !== Number(state.cls)) continue;
      if (state.correct === "right" && wrong(k)) continue;
      if (state.correct === "wrong" && !wrong(k)) continue;
      vis.push(k);
      const cap = I.truth[k] !== null ? `${C[I.truth[k]]} → ${C[I.pred[k]]}` : C[I.pred[k]];
      const t = el("div", { class: "thumb" + (wrong(k) ? " wrong" : "") + (k === state.k ? " selected" : ""),
                            "data-testid": "thumb", "data-index": k, title: I.labels[k] },
        el("img", { src: I.src[k], alt: I.labels[k] }),
        el("div", { class: wrong(k) ? "bad" : "", text: (wrong(k) ? "✗ " : "") + cap }),
        el("div", { class: "muted", text: pct(I.conf[k]) }));
      t.onclick = () => { state.k = k; X.renderAll(); };
      grid.append(t);
    }
    shown.gallery = vis;
    document.getElementById("gallery-count").textContent = `${vis.length} of ${n} shown`;
  }
  return render;
}
