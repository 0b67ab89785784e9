// Per class: the mean rollout over the test images, drawn once (it does not follow the
// selected image).
function classMeansView(X) {
  const cm = X.section("class-section", "Where it looks per class: mean rollout over the test images (colours stretched min to max)");
  const means = X.doc.class_means, maps = unpack(means.maps), row = el("div", { class: "row" });
  X.C.forEach((c, i) => {
    const cv = el("canvas"), v = X.slice(maps, i);
    X.draw(cv, null, v, { px: 96, stretch: true });
    X.shown.classMean[i] = v;
    row.append(el("div", { class: "cell", "data-testid": "class-mean", "data-class": i }, cv,
      el("div", { text: `${c} (n=${means.counts[i]})` })));
  });
  cm.append(row);
}
