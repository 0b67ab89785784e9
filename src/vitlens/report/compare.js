// The compare page's entry: one explorer context per model (core.js) sharing one state, so a
// map, layer, head or patch picked in either model's view shows in both; the shared views
// (image, head, model, class means) once per model, side by side, and the compare views
// (compare_views.js) between them.
(async function () {
  const D = JSON.parse(document.getElementById("vitlens-data").textContent), M = D.meta;
  D.b.images.src = D.a.images.src;  // one set of thumbnails (vitlens.report.compare)
  // The rollout, the map the agreement scores, on the least alike image.
  const state = Object.assign(initialState("rollout"), { k: D.summary.lowest_image });
  const app = document.getElementById("app");
  window.vitlens = { doc: D, state, ready: false };
  const A = await explorerContext(D.a, { state, prefix: "a-", label: "A", app });
  const B = await explorerContext(D.b, { state, prefix: "b-", label: "B", app });
  const K = { D, A, B, state, shown: {} };
  window.vitlens.shown = Object.assign(K.shown, { a: A.shown, b: B.shown });
  app.textContent = "";
  app.append(el("header", {}, el("h1", { text: M.title }),
    el("small", { text: `A: ${M.names[0]} · B: ${M.names[1]} · ${A.n} test images · ${A.C.length} classes` })));
  summaryView(K, app);
  const renderGallery = compareGallery(K);
  const row = () => { const r = el("div", { class: "pair compare" }); app.append(r); return r; };
  const maps = row();
  const renderA = imageView(A, maps), renderB = imageView(B, maps), renderDiff = diffView(K, maps);
  const heads = row(), headA = headView(A, heads), headB = headView(B, heads);
  const models = row(), modelA = modelView(A, headA, models), modelB = modelView(B, headB, models);
  const classes = row();
  classMeansView(A, classes); classMeansView(B, classes); classCompareView(K, classes);
  compareFactsView(K, app);
  const linked = () => { headA.render(); headB.render(); modelA(); modelB(); };
  const renderAll = () => { renderGallery(); renderA(); renderB(); renderDiff(); linked(); };
  for (const X of [A, B]) Object.assign(X, { linked, renderAll });
  renderAll();
  window.vitlens.loadMs = performance.now();  // since navigation: the time to open
  window.vitlens.ready = true;
})().catch((e) => { document.getElementById("app").textContent = "compare page failed: " + e; window.vitlens = { error: String(e) }; throw e; });
