// The model view: what the head reads (the CLS token's row, or the patch tokens' mean row)
// in every layer and head at once; a click opens that layer and head in the head view.
function modelView(X, head, parent = X.app) {
  const { I, nh, state, shown, images, attnRow, READ } = X;
  const mv = X.section(X.id("model-section"), READ < 0 ? "Model view: the patch tokens' mean attention (what the head reads), every layer and head"
                                                 : "Model view: the CLS token's attention, every layer and head", parent);
  const mgrid = el("div", { class: "grid", id: X.id("model-grid"), style: `grid-template-columns: 60px repeat(${nh}, 70px)` });
  mv.append(mgrid);
  function render() {
    mgrid.textContent = "";
    mgrid.append(el("div"), ...I.head_ids.map((h) => el("div", { class: "cell", text: `head ${h + 1}` })));
    shown.model = [];
    I.layers.forEach((l, li) => {
      mgrid.append(el("div", { class: "cell", text: `layer ${l + 1}` }));
      shown.model.push([]);
      I.head_ids.forEach((h, hi) => {
        const cv = el("canvas"), row = attnRow(state.k, li, hi, READ);
        X.draw(cv, images[state.k], row, { px: 64, alpha: 0.75 });
        shown.model[li].push(row);
        const active = li === Math.min(state.layer, I.layers.length - 1) && hi === Math.min(state.head, nh - 1);
        const cell = el("div", { class: "cell" + (active ? " active" : ""),
                                 "data-testid": "model-cell", "data-layer": li, "data-head": hi }, cv);
        cell.onclick = () => {
          Object.assign(state, { layer: li, head: hi, token: READ, pinned: false });
          X.linked(); head.section.scrollIntoView();
        };
        mgrid.append(cell);
      });
    });
  }
  return render;
}
