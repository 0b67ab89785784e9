// The explorer's entry: builds the shared context (core.js), then each view's section in the
// page's order, and draws them. The views that follow the selected image are redrawn together.
(async function () {
  const doc = JSON.parse(document.getElementById("vitlens-data").textContent);
  const X = await explorerContext(doc), { M, G, n } = X;
  window.vitlens = { doc, state: X.state, shown: X.shown, ready: false };
  X.app.textContent = "";
  X.app.append(el("header", {}, el("h1", { text: M.title }),
    el("small", { text: `${n} images of ${M.image_size}px · ${X.C.length} classes · ${M.n_layers} layers × ${M.n_heads} heads · ${G}×${G} patches of ${M.patch_size}px` })));
  if (M.image_size > 64) X.app.classList.add("large-images");  // thumbnails shrink them: smooth, not pixelated
  const renderGallery = galleryView(X);
  const pair = el("div", { class: "pair" });  // the image and head views side by side when wide
  X.app.append(pair);
  const renderImage = imageView(X, pair), head = headView(X, pair), renderModel = modelView(X, head);
  if (doc.class_means) classMeansView(X);
  if (doc.training) await trainingView(X);
  if (doc.facts) factsView(X);
  X.linked = () => { head.render(); renderModel(); };
  X.renderAll = () => { renderGallery(); renderImage(); X.linked(); };
  X.renderAll();
  window.vitlens.loadMs = performance.now();  // since navigation: the time to open
  window.vitlens.ready = true;
})().catch((e) => { document.getElementById("app").textContent = "explorer failed: " + e; window.vitlens = { error: String(e) }; throw e; });
