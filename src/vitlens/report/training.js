// Attention through training: the validation images' maps after each epoch, on a slider.
async function trainingView(X) {
  const { H, C, state, select } = X;
  const T = X.doc.training, tr = X.section("training-section", "Attention through training (validation images)");
  const roll = unpack(T.rollout), th = unpack(T.heads), ns = T.truth.length, snaps = await loadImages(T.src);
  const slider = el("input", { type: "range", min: 0, max: T.epochs.length - 1, step: 1, value: 0, id: "epoch", "data-testid": "epoch" });
  const label = el("b", { id: "epoch-label" }), row = el("div", { class: "row" });
  const kinds = [["rollout", "rollout"], ...Array.from({ length: H }, (_, h) => [`head:${h}`, `last layer, head ${h + 1}`])];
  tr.append(el("div", { class: "controls" }, el("label", {}, "epoch ", slider), label,
    select("snap-kind", kinds, "rollout", (v) => { state.snapMap = v; render(); })), row);
  const canvases = Array.from({ length: ns }, () => el("canvas"));
  canvases.forEach((cv, j) => row.append(el("div", { class: "cell" }, cv, el("div", { text: C[T.truth[j]] }))));
  slider.oninput = () => { state.epoch = Number(slider.value); render(); };
  function render() {
    const e = state.epoch, maps = [];
    label.textContent = `epoch ${T.epochs[e]} of ${T.epochs[T.epochs.length - 1]}`;
    canvases.forEach((cv, j) => {
      const v = state.snapMap === "rollout" ? X.slice(roll, e * ns + j)
        : X.slice(th, (e * ns + j) * H + Number(state.snapMap.slice(5)));
      X.draw(cv, snaps[j], v, { px: 128 });
      maps.push(v);
    });
    X.shown.epoch = { index: e, epoch: T.epochs[e], kind: state.snapMap, maps };
  }
  render();
}
