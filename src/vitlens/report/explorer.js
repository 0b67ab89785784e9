"use strict";
// The vitlens attention explorer: reads the JSON in #vitlens-data (vitlens.report.data), draws
// every view on canvases. window.vitlens.shown holds the exact numbers each view last drew,
// so tests can compare what the page shows with what Python computed.
(async function () {
  const doc = JSON.parse(document.getElementById("vitlens-data").textContent);
  const M = doc.meta, G = M.grid, P = G * G, N = P + 1, C = M.classes;
  const I = doc.images, n = I.labels.length, H = M.n_heads;
  const state = { k: 0, map: "rollout", alpha: 0.6, layer: 0, head: 0, token: 0, pinned: false,
                  epoch: 0, snapMap: "rollout", cls: "all", correct: "all" };
  const shown = { classMean: {} };
  window.vitlens = { doc, state, shown, ready: false };

  const b64 = (s) => {  // a plain loop: Uint8Array.from(str, fn) is several times slower on MBs
    const bin = atob(s), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  };
  function unpack(p) {  // uint8 per map, value = byte / 255 * the map's scale
    const q = b64(p.data), size = p.shape.slice(-2).reduce((a, b) => a * b, 1);
    const out = new Float32Array(q.length);
    for (let i = 0; i < q.length; i++) out[i] = q[i] / 255 * p.scale[Math.floor(i / size)];
    return out;
  }
  async function inflate(p) {  // zlib'd round(levels * sqrt(a)) -> a
    const stream = new Blob([b64(p.data)]).stream().pipeThrough(new DecompressionStream("deflate"));
    const q = new Uint8Array(await new Response(stream).arrayBuffer());
    const out = new Float32Array(q.length);
    for (let i = 0; i < q.length; i++) { const v = q[i] / p.levels; out[i] = v * v; }
    return out;
  }
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) k === "text" ? (e.textContent = v) : e.setAttribute(k, v);
    e.append(...kids);
    return e;
  };
  const pct = (x) => (100 * x).toFixed(1) + "%";
  const argsort = (v) => Array.from(v.keys()).sort((a, b) => v[b] - v[a] || a - b);  // ties: lower first
  const loadImages = (srcs) => Promise.all(srcs.map((s) => { const im = new Image(); im.src = s; return im.decode().then(() => im); }));

  const STOPS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];  // inferno
  function colour(t) {
    t = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i;
    return STOPS[i].map((c, j) => Math.round(c + f * (STOPS[i + 1][j] - c)));
  }
  // The image (or black) with a G x G map on top, scaled to its max; top-k patches outlined.
  function draw(canvas, img, values, { alpha = state.alpha, px = 288, top = [], query = -1, stretch = false } = {}) {
    canvas.width = canvas.height = px;
    const ctx = canvas.getContext("2d"), cell = px / G;
    ctx.imageSmoothingEnabled = false;
    if (img) ctx.drawImage(img, 0, 0, px, px); else { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, px, px); }
    // 0 to the max (a share of attention reads as one); `stretch`: min to max, for means
    // whose differences are small next to their level.
    const lo = stretch ? Math.min(...values) : 0, span = Math.max(1e-12, Math.max(...values) - lo);
    for (let p = 0; p < P; p++) {
      const [r, g, b] = colour((values[p] - lo) / span);
      ctx.fillStyle = `rgba(${r},${g},${b},${img ? alpha : 1})`;
      ctx.fillRect((p % G) * cell, Math.floor(p / G) * cell, cell, cell);
    }
    top.forEach((p, i) => {
      ctx.strokeStyle = i === 0 ? "#00e5ff" : "#fff"; ctx.lineWidth = i === 0 ? 4 : 2;
      ctx.strokeRect((p % G) * cell + 2, Math.floor(p / G) * cell + 2, cell - 4, cell - 4);
    });
    if (query >= 0) {
      ctx.fillStyle = "#2a6fdb";
      ctx.beginPath(); ctx.arc((query % G + 0.5) * cell, (Math.floor(query / G) + 0.5) * cell, cell / 6, 0, 7); ctx.fill();
    }
  }

  const rollout = unpack(I.rollout), grad = unpack(I.grad_rollout), heads = unpack(I.heads);
  const attn = await inflate(I.attention);
  const [nl, nh] = [I.layers.length, I.head_ids.length];
  const images = await loadImages(I.src);
  const slice = (a, i, len = P) => Array.from(a.subarray(i * len, (i + 1) * len));
  function mainMap(k, kind) {
    if (kind === "rollout") return slice(rollout, k);
    if (kind === "grad_rollout") return slice(grad, k);
    if (kind === "last_layer") {
      const out = new Array(P).fill(0);
      for (let h = 0; h < H; h++) slice(heads, k * H + h).forEach((v, p) => { out[p] += v / H; });
      return out;
    }
    return slice(heads, k * H + Number(kind.slice(5)));  // "head:h"
  }
  // Row `token` of layer li, head hi over the patches (key columns 1..P); token -1 is the
  // mean of the patch rows: what the head reads under model.pool=mean (M.readout "patch-mean").
  const attnRow = (k, li, hi, token) => {
    if (token >= 0) return Array.from(attn.subarray(
      (((k * nl + li) * nh + hi) * N + token) * N + 1, (((k * nl + li) * nh + hi) * N + token + 1) * N));
    const out = new Array(P).fill(0);
    for (let t = 1; t <= P; t++) attnRow(k, li, hi, t).forEach((v, p) => { out[p] += v / P; });
    return out;
  };
  const READ = M.readout === "patch-mean" ? -1 : 0;  // the token the head reads
  state.token = READ;

  const app = document.getElementById("app");
  app.textContent = "";
  app.append(el("header", {}, el("h1", { text: M.title }),
    el("small", { text: `${n} images · ${M.n_layers} layers × ${M.n_heads} heads · ${G}×${G} patches of ${M.patch_size}px` })));
  const section = (id, title, parent = app) => {
    const s = el("section", { id }, el("h2", { text: title }));
    parent.append(s);
    return s;
  };
  const select = (id, options, value, onchange) => {
    const s = el("select", { id, "data-testid": id });
    options.forEach(([v, label]) => s.append(el("option", { value: v, text: label })));
    s.value = value; s.onchange = () => onchange(s.value);
    return s;
  };

  // 1. Gallery
  const gal = section("gallery-section", "Images");
  const labelled = I.truth.some((t) => t !== null);
  const classOpts = [["all", "all classes"], ...C.map((c, i) => [String(i), c])];
  gal.append(el("div", { class: "controls" },
    select("filter-class", classOpts, "all", (v) => { state.cls = v; renderGallery(); }),
    ...(labelled ? [select("filter-correct", [["all", "right and wrong"], ["right", "right only"], ["wrong", "mistakes only"]],
      "all", (v) => { state.correct = v; renderGallery(); })] : []),
    el("span", { class: "muted", id: "gallery-count" })));
  const grid = el("div", { id: "gallery" });
  gal.append(grid);
  const wrong = (k) => I.truth[k] !== null && I.truth[k] !== I.pred[k];
  function renderGallery() {
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
      t.onclick = () => { state.k = k; renderAll(); };
      grid.append(t);
    }
    shown.gallery = vis;
    document.getElementById("gallery-count").textContent = `${vis.length} of ${n} shown`;
  }

  // 2. The selected image and its maps
  const pair = el("div", { class: "pair" });  // the image and head views side by side when wide
  app.append(pair);
  const sel = section("image-section", "Where it looks", pair);
  const mapOpts = [["rollout", "attention rollout"], ["grad_rollout", "gradient-weighted rollout"],
    ["last_layer", "last layer, mean of heads"], ...Array.from({ length: H }, (_, h) => [`head:${h}`, `last layer, head ${h + 1}`])];
  const mainCanvas = el("canvas", { class: "big", id: "main-map", "data-testid": "main-map" });
  const opacity = el("input", { type: "range", min: 0, max: 1, step: 0.05, value: state.alpha, id: "opacity", "data-testid": "opacity" });
  opacity.oninput = () => { state.alpha = Number(opacity.value); renderAll(); };
  const selInfo = el("div", { class: "probs" });
  const mapSel = select("map-kind", mapOpts, state.map, (v) => { state.map = v; renderMain(); });
  // Every map of the image at once, small; a click shows it large.
  const strip = mapOpts.map(([kind, label]) => {
    const cv = el("canvas"), cell = el("div", { class: "cell", "data-testid": "map-choice", "data-kind": kind, title: label },
      cv, el("div", { text: label.replace("last layer, ", "") }));
    cell.onclick = () => { state.map = kind; mapSel.value = kind; renderMain(); };
    return { kind, cv, cell };
  });
  sel.append(el("div", { class: "controls" }, mapSel, el("label", {}, "opacity ", opacity)),
    el("div", { class: "row" }, mainCanvas, selInfo), el("div", { class: "strip" }, ...strip.map((m) => m.cell)));
  function renderMain() {
    const k = state.k, v = mainMap(k, state.map);
    draw(mainCanvas, images[k], v);
    strip.forEach((m) => {
      draw(m.cv, images[k], mainMap(k, m.kind), { px: 64 });
      m.cell.classList.toggle("active", m.kind === state.map);
    });
    shown.main = { k, kind: state.map, values: v };
    selInfo.textContent = "";
    selInfo.append(el("b", { text: I.labels[k] }), el("div", { text: I.truth[k] !== null ? `truth: ${C[I.truth[k]]}` : "" }));
    argsort(I.probs[k]).slice(0, 5).forEach((c) => selInfo.append(el("div", {},
      el("span", { text: `${C[c]} ${pct(I.probs[k][c])}`, style: "width:120px" }),
      el("span", { class: "bar", style: `width:${Math.round(120 * I.probs[k][c])}px` }))));
  }

  // 3. Head view
  const hv = section("head-section", "Head view: which patches a token reads", pair);
  const layerSel = select("layer", I.layers.map((l, i) => [String(i), `layer ${l + 1}`]), "0", (v) => { state.layer = Number(v); renderHead(); });
  const headSel = select("head", I.head_ids.map((h, i) => [String(i), `head ${h + 1}`]), "0", (v) => { state.head = Number(v); renderHead(); });
  const clsBtn = el("button", { id: "cls-token", "data-testid": "cls-token", text: "CLS token" });
  clsBtn.onclick = () => { state.token = 0; state.pinned = false; renderHead(); };
  const meanBtn = el("button", { id: "patch-mean", "data-testid": "patch-mean", text: "patch mean (what the head reads)" });
  meanBtn.onclick = () => { state.token = -1; state.pinned = false; renderHead(); };
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
  headCanvas.onmousemove = (ev) => { if (!state.pinned) { state.token = 1 + patchAt(ev); renderHead(); } };
  headCanvas.onclick = (ev) => { state.token = 1 + patchAt(ev); state.pinned = true; renderHead(); };
  function renderHead() {
    layerSel.value = String(state.layer); headSel.value = String(state.head);
    const row = attnRow(state.k, state.layer, state.head, state.token), order = argsort(row);
    draw(headCanvas, images[state.k], row, { top: order.slice(0, 5), query: state.token - 1 });
    Object.assign(shown, { head: row, top: order[0], top5: order.slice(0, 5), token: state.token });
    const name = (t) => t === 0 ? "CLS" : t < 0 ? "mean of the patches" : `patch (${Math.floor((t - 1) / G)}, ${(t - 1) % G})`;
    headInfo.textContent = "";
    headInfo.append(el("div", { text: `${I.labels[state.k]} · layer ${I.layers[state.layer] + 1} · head ${I.head_ids[state.head] + 1}` }),
      el("div", { text: `query: ${name(state.token)}${state.pinned ? " (pinned)" : ""}` }),
      el("div", { text: "top patches:" }),
      ...order.slice(0, 5).map((p) => el("div", { class: "muted", text: `${name(p + 1)}: ${pct(row[p])}` })));
  }

  // 4. Model view
  const mv = section("model-section", READ < 0 ? "Model view: the patch tokens' mean attention (what the head reads), every layer and head"
                                                : "Model view: the CLS token's attention, every layer and head");
  const mgrid = el("div", { class: "grid", id: "model-grid", style: `grid-template-columns: 60px repeat(${nh}, 70px)` });
  mv.append(mgrid);
  function renderModel() {
    mgrid.textContent = "";
    mgrid.append(el("div"), ...I.head_ids.map((h) => el("div", { class: "cell", text: `head ${h + 1}` })));
    shown.model = [];
    I.layers.forEach((l, li) => {
      mgrid.append(el("div", { class: "cell", text: `layer ${l + 1}` }));
      shown.model.push([]);
      I.head_ids.forEach((h, hi) => {
        const cv = el("canvas"), row = attnRow(state.k, li, hi, READ);
        draw(cv, images[state.k], row, { px: 64, alpha: 0.75 });
        shown.model[li].push(row);
        const cell = el("div", { class: "cell" + (li === state.layer && hi === state.head ? " active" : ""),
                                 "data-testid": "model-cell", "data-layer": li, "data-head": hi }, cv);
        cell.onclick = () => { Object.assign(state, { layer: li, head: hi, token: READ, pinned: false }); renderHead(); renderModel(); hv.scrollIntoView(); };
        mgrid.append(cell);
      });
    });
  }

  // 5. Per-class mean maps
  if (doc.class_means) {
    const cm = section("class-section", "Where it looks per class: mean rollout over the test images (colours stretched min to max)");
    const maps = unpack(doc.class_means.maps), row = el("div", { class: "row" });
    C.forEach((c, i) => {
      const cv = el("canvas"), v = slice(maps, i);
      draw(cv, null, v, { px: 96, stretch: true });
      shown.classMean[i] = v;
      row.append(el("div", { class: "cell", "data-testid": "class-mean", "data-class": i }, cv,
        el("div", { text: `${c} (n=${doc.class_means.counts[i]})` })));
    });
    cm.append(row);
  }

  // 7. Attention through training
  if (doc.training) {
    const T = doc.training, tr = section("training-section", "Attention through training (validation images)");
    const roll = unpack(T.rollout), th = unpack(T.heads), ns = T.truth.length, snaps = await loadImages(T.src);
    const slider = el("input", { type: "range", min: 0, max: T.epochs.length - 1, step: 1, value: 0, id: "epoch", "data-testid": "epoch" });
    const label = el("b", { id: "epoch-label" }), row = el("div", { class: "row" });
    const kinds = [["rollout", "rollout"], ...Array.from({ length: H }, (_, h) => [`head:${h}`, `last layer, head ${h + 1}`])];
    tr.append(el("div", { class: "controls" }, el("label", {}, "epoch ", slider), label,
      select("snap-kind", kinds, "rollout", (v) => { state.snapMap = v; renderEpoch(); })), row);
    const canvases = Array.from({ length: ns }, () => el("canvas"));
    canvases.forEach((cv, j) => row.append(el("div", { class: "cell" }, cv, el("div", { text: C[T.truth[j]] }))));
    slider.oninput = () => { state.epoch = Number(slider.value); renderEpoch(); };
    function renderEpoch() {
      const e = state.epoch, maps = [];
      label.textContent = `epoch ${T.epochs[e]} of ${T.epochs[T.epochs.length - 1]}`;
      canvases.forEach((cv, j) => {
        const v = state.snapMap === "rollout" ? slice(roll, e * ns + j)
          : slice(th, (e * ns + j) * H + Number(state.snapMap.slice(5)));
        draw(cv, snaps[j], v, { px: 128 });
        maps.push(v);
      });
      shown.epoch = { index: e, epoch: T.epochs[e], kind: state.snapMap, maps };
    }
    renderEpoch();
  }

  // 6. The run's facts
  const fmt = (c) => typeof c === "number" ? (Number.isInteger(c) ? String(c) : c.toFixed(3)) : String(c);
  function table(header, rows, cellStyle = () => "") {
    return el("table", {}, el("tr", {}, ...header.map((h) => el("th", { text: h }))),
      ...rows.map((r) => el("tr", {}, ...r.map((c, j) => el("td", { text: fmt(c), style: cellStyle(c, j) })))));
  }
  // Two per-epoch series on inline SVG, with the axes' ranges as tick labels.
  function curves(hist, keys, title) {
    const W = 320, Hh = 170, L = 44, R = 10, T = 26, B = 28, ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", W); svg.setAttribute("height", Hh); svg.setAttribute("data-testid", "curve");
    const xs = hist.map((r) => r.epoch), ys = hist.flatMap((r) => keys.map((k) => r[k])).filter(Number.isFinite);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const sx = (x) => L + (x - x0) / Math.max(1, x1 - x0) * (W - L - R);
    const sy = (y) => Hh - B - (y - y0) / Math.max(1e-9, y1 - y0) * (Hh - T - B);
    const add = (tag, attrs, text) => {
      const e = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      svg.append(e);
      return e;
    };
    add("text", { x: L, y: 14, "font-size": 13, "font-weight": 600 }, title);
    add("polyline", { fill: "none", stroke: "#999", points: `${L},${T} ${L},${Hh - B} ${W - R},${Hh - B}` });
    [y0, y1].forEach((y) => add("text", { x: L - 4, y: sy(y) + 4, "font-size": 10, "text-anchor": "end" }, y.toFixed(2)));
    [x0, x1].forEach((x) => add("text", { x: sx(x), y: Hh - B + 14, "font-size": 10, "text-anchor": "middle" }, String(x)));
    add("text", { x: (L + W - R) / 2, y: Hh - 4, "font-size": 10, "text-anchor": "middle", fill: "#666" }, "epoch");
    ["#2a6fdb", "#e07b00"].forEach((col, i) => {
      const pts = hist.filter((r) => Number.isFinite(r[keys[i]])).map((r) => `${sx(r.epoch)},${sy(r[keys[i]])}`);
      add("polyline", { fill: "none", stroke: col, "stroke-width": 2, points: pts.join(" ") });
      add("text", { x: W - R - 120 + 62 * i, y: 14, "font-size": 11, fill: col }, keys[i]);
    });
    return svg;
  }
  function heat(rows) {  // a table whose cells are coloured by value, min to max
    const vals = rows.flat(), lo = Math.min(...vals), span = Math.max(1e-9, Math.max(...vals) - lo);
    return (c, j) => {
      if (j === 0) return "";
      const t = (parseFloat(c) - lo) / span, [r, g, b] = colour(0.15 + 0.8 * t);
      return `background: rgb(${r},${g},${b}); color: ${t > 0.55 ? "#000" : "#fff"}`;
    };
  }
  function renderFacts(f, box) {
    box.append(el("p", { "data-testid": "test-accuracy", text: f.test_accuracy === null ? "test accuracy: not evaluated" : `test accuracy ${pct(f.test_accuracy)}` }));
    const show = (v) => v === null || v === undefined ? "—" : JSON.stringify(v);
    if (f.params_diff) box.append(el("h3", { text: "Params that differ from params.yaml" }),
      f.params_diff.length ? table(["param", "this run", "default"], f.params_diff.map(([k, v, d]) => [k, show(v), show(d)]))
        : el("p", { class: "muted", text: "none" }));
    if (f.history.length) box.append(el("h3", { text: "Per epoch" }), el("div", { class: "row" },
      curves(f.history, ["train_loss", "val_loss"], "loss"), curves(f.history, ["train_acc", "val_acc"], "accuracy")));
    if (f.faithfulness) box.append(el("h3", { text: "Faithfulness (deletion AUC: lower is better; insertion AUC: higher)" }),
      table(["method", "deletion AUC", "insertion AUC"], Object.entries(f.faithfulness).map(([m, s]) => [m, s.deletion_auc, s.insertion_auc])));
    if (f.distance) box.append(el("h3", { text: "Mean attention distance (pixels) per layer and head" }),
      table(["layer", ...f.distance[0].map((_, h) => `head ${h + 1}`)], f.distance.map((r, l) => [`layer ${l + 1}`, ...r.map((d) => d.toFixed(1))]), heat(f.distance)));
  }

  if (doc.facts) renderFacts(doc.facts, section("facts-section", "The run"));

  function renderAll() { renderGallery(); renderMain(); renderHead(); renderModel(); }
  renderAll();
  window.vitlens.loadMs = performance.now();  // since navigation: the time to open
  window.vitlens.ready = true;
})().catch((e) => { document.getElementById("app").textContent = "explorer failed: " + e; window.vitlens = { error: String(e) }; throw e; });
