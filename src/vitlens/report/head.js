// The head view: which patches one token reads in one layer and head; hover a patch to see its
// row, click to pin it. Returns its render function and its section (the model view scrolls
// to it).
function headView(X, parent) {
  const { I, G, state, shown, images, attnRow, READ, select } = X;
  const hv = X.section("head-section", "Head view: which patches a token reads", parent);
  const layerSel = select("layer", I.layers.map((l, i) => [String(i), `layer ${l + 1}`]), "0", (v) => { state.layer = Number(v); render(); });
  const headSel = select("head", I.head_ids.map((h, i) => [String(i), `head ${h + 1}`]), "0", (v) => { state.head = Number(v); render(); });
  const clsBtn = el("button", { id: "cls-token", "data-testid": "cls-token", text: "CLS token" });
  clsBtn.onclick = () => { state.token = 0; state.pinned = false; render(); };
  const meanBtn = el("button", { id: "patch-mean", "data-testid": "patch-mean", text: "patch mean (what the head reads)" });
  meanBtn.onclick = () => { state.token = -1; state.pinned = false; render(); };
  const headCanvas = el("canvas", { class: "big", id: "head-canvas", "data-testid": "head-canvas" });
  const headInfo = el("div", { id: "head-info", "data-testid": "head-info" });
  hv.append(el("div", { class: "controls" }, layerSel, headSel, clsBtn, ...(READ < 0 ? [meanBtn] : []),
    el("span", { class: "muted", text: "hover a patch: what it reads; click: pin it" })),
    el("div", { class: "row" }, headCanvas, headInfo));
  const patchAt = (ev) => {
    const r = headCanvas.getBoundingClientRect();
    const c = Math.floor((ev.clientX - r.left) / r.width * G), w = Math.floor((ev.clientY - r.top) / r.height * G);
    return Math.min(G - 1, Math.max(0, w)) * G + Math.min(G - 1, Math.max(0, c));
  };
  headCanvas.onmousemove = (ev) => { if (!state.pinned) { state.token = 1 + patchAt(ev); render(); } };
  headCanvas.onclick = (ev) => { state.token = 1 + patchAt(ev); state.pinned = true; render(); };
  function render() {
    layerSel.value = String(state.layer); headSel.value = String(state.head);
    const row = attnRow(state.k, state.layer, state.head, state.token), order = argsort(row);
    X.draw(headCanvas, images[state.k], row, { top: order.slice(0, 5), query: state.token - 1 });
    Object.assign(shown, { head: row, top: order[0], top5: order.slice(0, 5), token: state.token });
    const name = (t) => t === 0 ? "CLS" : t < 0 ? "mean of the patches" : `patch (${Math.floor((t - 1) / G)}, ${(t - 1) % G})`;
    headInfo.textContent = "";
    headInfo.append(el("div", { text: `${I.labels[state.k]} · layer ${I.layers[state.layer] + 1} · head ${I.head_ids[state.head] + 1}` }),
      el("div", { text: `query: ${name(state.token)}${state.pinned ? " (pinned)" : ""}` }),
      el("div", { text: "top patches:" }),
      ...order.slice(0, 5).map((p) => el("div", { class: "muted", text: `${name(p + 1)}: ${pct(row[p])}` })));
  }
  return { render, section: hv };
}
