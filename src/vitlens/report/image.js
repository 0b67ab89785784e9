// The selected image: one map large over it (with the opacity), every map small beside it,
// and the top five classes.
function imageView(X, parent) {
  const { I, C, H, state, shown, images, mainMap, select, trust } = X;
  const sel = X.section(X.id("image-section"), "Where it looks", parent);
  const blank = (cv, px) => {  // a map this model lacks (a head past its count)
    cv.width = cv.height = px; const ctx = cv.getContext("2d"); ctx.fillStyle = "#e4e4e4"; ctx.fillRect(0, 0, px, px);
  };
  const mapOpts = [["rollout", "attention rollout"], ["grad_rollout", "gradient-weighted rollout"],
    ["last_layer", "last layer, mean of heads"], ...Array.from({ length: H }, (_, h) => [`head:${h}`, `last layer, head ${h + 1}`])];
  const mainCanvas = el("canvas", { class: "big", id: X.id("main-map"), "data-testid": X.id("main-map") });
  const opacity = el("input", { type: "range", min: 0, max: 1, step: 0.05, value: state.alpha, id: X.id("opacity"), "data-testid": X.id("opacity") });
  opacity.oninput = () => { state.alpha = Number(opacity.value); X.renderAll(); };
  const selInfo = el("div", { class: "probs" });
  const names = Object.fromEntries(mapOpts);
  // Why the page opened on this map, and a warning on each map the run's scores do not back.
  const opened = el("div", { class: "note", "data-testid": "opened-on", text: trust && state.map === trust.best
    ? `opened on ${names[trust.best]}: this run's best deletion AUC (${trust.best_auc.toFixed(3)})` : "" });
  const warning = el("div", { class: "warn", "data-testid": "map-warning" });
  const warnOf = (kind) => (trust && trust.warnings[kind]) || "";
  const mapSel = select(X.id("map-kind"), mapOpts, state.map, (v) => { state.map = v; X.renderAll(); });
  // Every map of the image at once, small; a click shows it large.
  const strip = mapOpts.map(([kind, label]) => {
    const w = warnOf(kind), cv = el("canvas");
    const cell = el("div", { class: "cell", "data-testid": "map-choice", "data-kind": kind, title: w ? `${label}: ${w}` : label },
      cv, el("div", { text: (w ? "⚠ " : "") + label.replace("last layer, ", "") }));
    cell.onclick = () => { state.map = kind; X.renderAll(); };
    return { kind, cv, cell };
  });
  sel.append(el("div", { class: "controls" }, mapSel, el("label", {}, "opacity ", opacity)), opened, warning,
    el("div", { class: "row" }, mainCanvas, selInfo), el("div", { class: "strip" }, ...strip.map((m) => m.cell)));
  function render() {
    const k = state.k, v = mainMap(k, state.map);
    mapSel.value = state.map; opacity.value = state.alpha;
    if (v) X.draw(mainCanvas, images[k], v); else blank(mainCanvas, 288);
    strip.forEach((m) => {
      X.draw(m.cv, images[k], mainMap(k, m.kind), { px: 64 });
      m.cell.classList.toggle("active", m.kind === state.map);
    });
    shown.main = { k, kind: state.map, values: v };
    warning.textContent = warnOf(state.map) ? `⚠ ${names[state.map]}: ${warnOf(state.map)}` : "";
    selInfo.textContent = "";
    selInfo.append(el("b", { text: I.labels[k] }), el("div", { text: I.truth[k] !== null ? `truth: ${C[I.truth[k]]}` : "" }));
    argsort(I.probs[k]).slice(0, 5).forEach((c) => selInfo.append(el("div", {},
      el("span", { text: `${C[c]} ${pct(I.probs[k][c])}`, style: "width:150px", title: `${C[c]} ${pct(I.probs[k][c])}` }),
      el("span", { class: "bar", style: `width:${Math.round(120 * I.probs[k][c])}px` }))));
  }
  return render;
}
