// The gallery: every image, filtered by class and by right or wrong; a click selects one.
// The class filter is a select of every class (with how many gallery images it has) and, past
// a dozen classes, a box that narrows it by name, so a hundred classes stay one control:
// typing keeps the classes whose name holds the text, Enter shows the first of them.
// The compare page passes `order` (the images least alike first), its own `outcomes` filter
// (value, label) with `outcome(k)` the value of image k, `wrong(k)` to mark it, and a
// `caption` and `detail` per image.
function galleryView(X, opts = {}) {
  const { I, C, n, state, shown, select } = X;
  const gal = X.section("gallery-section", "Images");
  const labelled = I.truth.some((t) => t !== null);
  const classOf = (k) => I.truth[k] !== null ? I.truth[k] : I.pred[k];
  const inClass = new Array(C.length).fill(0);
  for (let k = 0; k < n; k++) inClass[classOf(k)]++;
  const classOpts = [["all", "all classes"], ...C.map((c, i) => [String(i), `${c} (${inClass[i]})`])];
  const classSel = select("filter-class", classOpts, "all", (v) => { state.cls = v; render(); });
  classSel.title = `${C.length} classes; in brackets: the images of each shown here`;
  const find = el("input", { type: "search", id: "class-find", "data-testid": "class-find", size: 14,
                             placeholder: `find a class (${C.length})`, "aria-label": "find a class by name" });
  const matching = () => {  // the class indices whose name holds the text, in class order
    const q = find.value.trim().toLowerCase();
    return C.map((c, i) => [c.toLowerCase(), i]).filter(([c]) => c.includes(q)).map(([, i]) => i);
  };
  find.oninput = () => {
    const keep = new Set(matching().map(String));
    Array.from(classSel.options).forEach((o) => { o.hidden = o.value !== "all" && !keep.has(o.value); });
    shown.classOptions = Array.from(classSel.options).filter((o) => !o.hidden && o.value !== "all").map((o) => Number(o.value));
  };
  find.onkeydown = (ev) => {
    if (ev.key !== "Enter") return;
    const first = matching()[0];
    if (first !== undefined) { state.cls = String(first); render(); }
  };
  const wrong = (k) => I.truth[k] !== null && I.truth[k] !== I.pred[k];
  const order = opts.order || Array.from({ length: n }, (_, k) => k);
  const outcomes = opts.outcomes || (labelled ? [["all", "right and wrong"], ["right", "right only"], ["wrong", "mistakes only"]] : null);
  const outcome = opts.outcome || ((k) => wrong(k) ? "wrong" : "right");
  const caption = opts.caption || ((k) => I.truth[k] !== null ? `${C[I.truth[k]]} → ${C[I.pred[k]]}` : C[I.pred[k]]);
  const detail = opts.detail || ((k) => pct(I.conf[k]));
  const isWrong = opts.wrong || wrong;  // marked red
  gal.append(el("div", { class: "controls" }, classSel, ...(C.length > 12 ? [find] : []),
    ...(outcomes ? [select("filter-correct", outcomes, "all", (v) => { state.correct = v; render(); })] : []),
    el("span", { class: "muted", id: "gallery-count" })));
  const grid = el("div", { id: "gallery" });
  gal.append(grid);
  function render() {
    classSel.value = state.cls;
    grid.textContent = "";
    const vis = [];
    for (const k of order) {
      if (state.cls !== "all" && classOf(k) !== Number(state.cls)) continue;
      if (state.correct !== "all" && outcome(k) !== state.correct) continue;
      vis.push(k);
      const cap = caption(k), bad = isWrong(k);
      const t = el("div", { class: "thumb" + (bad ? " wrong" : "") + (k === state.k ? " selected" : ""),
                            "data-testid": "thumb", "data-index": k, title: `${I.labels[k]}: ${cap}` },
        el("img", { src: I.src[k], alt: I.labels[k] }),
        el("div", { class: bad ? "bad" : "", text: (bad ? "✗ " : "") + cap }),
        el("div", { class: "muted", text: detail(k) }));
      t.onclick = () => { state.k = k; X.renderAll(); };
      grid.append(t);
    }
    shown.gallery = vis;
    const which = state.cls === "all" ? "" : ` (${C[Number(state.cls)]})`;
    document.getElementById("gallery-count").textContent = `${vis.length} of ${n} shown${which}`;
  }
  return render;
}
