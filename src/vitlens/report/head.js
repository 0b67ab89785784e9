// The head view: which patches one token reads in one layer and head; hover a patch to see its
// row, click to pin it. Returns its render function and its section (the model view scrolls
// to it).
function headView(X, parent) {
  const { I, G, state, shown, images, attnRow, READ, select } = X;
  const hv = X.section(X.id("head-section"), "Head view: which patches a token reads", parent);
  // Every change goes through X.linked: on the compare page it redraws both models' views.
  const layerSel = select(X.id("layer"), I.layers.map((l, i) => [String(i), `layer ${l + 1}`]), "0", (v) => { state.layer = Number(v); X.linked(); });
  const headSel = select(X.id("head"), I.head_ids.map((h, i) => [String(i), `head ${h + 1}`]), "0", (v) => { state.head = Number(v); X.linked(); });
  const button = (bid, text) => el("button", { id: X.id(bid), "data-testid": X.id(bid), text });
  const clsBtn = button("cls-token", "CLS token");
  clsBtn.onclick = () => { state.token = 0; state.pinned = false; X.linked(); };
  const meanBtn = button("patch-mean", "patch mean (what the head reads)");
  meanBtn.onclick = () => { state.token = -1; state.pinned = false; X.linked(); };
  const headCanvas = el("canvas", { class: "big", id: X.id("head-canvas"), "data-testid": X.id("head-canvas") });
  const headInfo = el("div", { id: X.id("head-info"), "data-testid": X.id("head-info") });
  hv.append(el("div", { class: "controls" }, layerSel, headSel, clsBtn, ...(READ < 0 ? [meanBtn] : []),
    el("span", { class: "muted", text: "hover a patch: what it reads; click: pin it" })),
    el("div", { class: "row" }, headCanvas, headInfo));
  const patchAt = (ev) => {
    const r = headCanvas.getBoundingClientRect();
    const c = Math.floor((ev.clientX - r.left) / r.width * G), w = Math.floor((ev.clientY - r.top) / r.height * G);
    return Math.min(G - 1, Math.max(0, w)) * G + Math.min(G - 1, Math.max(0, c));
  };
  const pick = (ev, pinned) => { Object.assign(state, { token: 1 + patchAt(ev), tokenGrid: G, pinned }); X.linked(); };
  headCanvas.onmousemove = (ev) => { if (!state.pinned) pick(ev, false); };
  headCanvas.onclick = (ev) => pick(ev, true);
  function render() {
    // A layer or head past this model's own (the other model of a comparison is deeper or
    // has more heads): its last one.
    const li = Math.min(state.layer, I.layers.length - 1), hi = Math.min(state.head, I.head_ids.length - 1);
    const token = X.tokenHere();
    layerSel.value = String(li); headSel.value = String(hi);
    const row = attnRow(state.k, li, hi, token), order = argsort(row);
    X.draw(headCanvas, images[state.k], row, { top: order.slice(0, 5), query: token - 1 });
    Object.assign(shown, { head: row, top: order[0], top5: order.slice(0, 5), token, layer: li, headIndex: hi });
    const name = (t) => t === 0 ? "CLS" : t < 0 ? "mean of the patches" : `patch (${Math.floor((t - 1) / G)}, ${(t - 1) % G})`;
    headInfo.textContent = "";
    headInfo.append(el("div", { text: `${I.labels[state.k]} · layer ${I.layers[li] + 1} · head ${I.head_ids[hi] + 1}` }),
      el("div", { text: `query: ${name(token)}${state.pinned ? " (pinned)" : ""}` }),
      el("div", { text: "top patches:" }),
      ...order.slice(0, 5).map((p) => el("div", { class: "muted", text: `${name(p + 1)}: ${pct(row[p])}` })));
  }
  return { render, section: hv };
}
