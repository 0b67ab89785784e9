"use strict";
// The vitlens attention explorer: reads the JSON in #vitlens-data (vitlens.report.data) and
// draws every view on canvases. This file holds what the views share: decoding the maps, DOM
// helpers, the colour scale and `draw`. Each view is one file, a function of this context
// that builds its section and returns how to redraw it; explorer.js wires them together.
// window.vitlens.shown holds the exact numbers each view last drew, so tests can compare what
// the page shows with what Python computed.
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
// Blue below, white at the middle, red above: for differences, 0.5 being none.
function diverging(t) {
  t = Math.min(1, Math.max(0, t));
  const far = Math.abs(t - 0.5) * 2, to = t < 0.5 ? [33, 102, 172] : [178, 24, 43];
  return to.map((c) => Math.round(255 + far * (c - 255)));
}
function colour(t) {
  t = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i;
  return STOPS[i].map((c, j) => Math.round(c + f * (STOPS[i + 1][j] - c)));
}

// The page's state: what is selected. The compare page hands one state to both models'
// contexts, so that a layer, head, patch or map picked once shows in both.
const initialState = (map = "rollout") => ({ k: 0, map, alpha: 0.6, layer: 0, head: 0, token: 0, tokenGrid: 0,
  pinned: false, epoch: 0, snapMap: "rollout", cls: "all", correct: "all" });

// The shared context of every view: one model's document, decoded, and the page's state.
// `id` puts `prefix` before an element's id (the compare page holds two of most views), and
// `label` goes before the title of each section with such an id; `linked` redraws what
// follows the layer, head and token, `renderAll` everything that follows the selected image.
async function explorerContext(doc, { state = null, prefix = "", label = "", app = null } = {}) {
  const M = doc.meta, G = M.grid, P = G * G, N = P + 1;
  const I = doc.images, H = M.n_heads;
  const trust = (doc.facts && doc.facts.maps) || null;  // the map this run's scores rank best
  state = state || initialState(trust ? trust.best : "rollout");
  const shown = { classMean: {} };
  const id = (name) => prefix + name;

  // The image (or black) with a G x G map on top, scaled to its max; top-k patches outlined.
  // Patch edges fall on whole pixels (a 12x12 grid on 64 px would leave seams between cells).
  // `grid`: the map's own side when it is not the model's (a difference on a common grid).
  function draw(canvas, img, values, { alpha = state.alpha, px = 288, top = [], query = -1, stretch = false,
                                       range = null, diverge = false, grid = G } = {}) {
    canvas.width = canvas.height = px;
    const g = grid, ctx = canvas.getContext("2d"), cell = px / g, edge = (i) => Math.round(i * cell);
    ctx.imageSmoothingEnabled = false;
    if (img) ctx.drawImage(img, 0, 0, px, px); else { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, px, px); }
    // 0 to the max (a share of attention reads as one); `stretch`: min to max; `range`: one
    // [lo, hi] shared by several maps, so that they compare; `diverge`: blue-white-red.
    const lo = range ? range[0] : stretch ? Math.min(...values) : 0;
    const span = Math.max(1e-12, (range ? range[1] : Math.max(...values)) - lo);
    for (let p = 0; p < g * g; p++) {
      const [red, green, blue] = (diverge ? diverging : colour)((values[p] - lo) / span);
      ctx.fillStyle = `rgba(${red},${green},${blue},${img ? alpha : 1})`;
      const c = p % g, r = Math.floor(p / g);
      ctx.fillRect(edge(c), edge(r), edge(c + 1) - edge(c), edge(r + 1) - edge(r));
    }
    top.forEach((p, i) => {
      ctx.strokeStyle = i === 0 ? "#00e5ff" : "#fff"; ctx.lineWidth = i === 0 ? 4 : 2;
      ctx.strokeRect((p % g) * cell + 2, Math.floor(p / g) * cell + 2, cell - 4, cell - 4);
    });
    if (query >= 0) {
      ctx.fillStyle = "#2a6fdb";
      ctx.beginPath(); ctx.arc((query % g + 0.5) * cell, (Math.floor(query / g) + 0.5) * cell, cell / 6, 0, 7); ctx.fill();
    }
  }

  const rollout = unpack(I.rollout), grad = unpack(I.grad_rollout), heads = unpack(I.heads);
  const attn = await inflate(I.attention);
  const [nl, nh] = [I.layers.length, I.head_ids.length];
  const slice = (a, i, len = P) => Array.from(a.subarray(i * len, (i + 1) * len));
  function mainMap(k, kind) {  // null: a head this model does not have
    if (kind === "rollout") return slice(rollout, k);
    if (kind === "grad_rollout") return slice(grad, k);
    if (kind === "last_layer") {
      const out = new Array(P).fill(0);
      for (let h = 0; h < H; h++) slice(heads, k * H + h).forEach((v, p) => { out[p] += v / H; });
      return out;
    }
    const h = Number(kind.slice(5));  // "head:h"
    return h < H ? slice(heads, k * H + h) : null;
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
  // The state's token on this model's grid: a patch picked on another grid (another patch
  // size) is the patch at the same place here.
  const tokenHere = () => {
    const t = state.token, tg = state.tokenGrid || G;
    if (t <= 0 || tg === G) return t;
    const r = Math.floor((t - 1) / tg), c = (t - 1) % tg;
    return 1 + Math.floor(r * G / tg) * G + Math.floor(c * G / tg);
  };

  app = app || document.getElementById("app");
  const section = (sid, title, parent = app) => {
    const own = label && prefix && sid.startsWith(prefix);  // this model's view, not a shared one
    const s = el("section", { id: sid }, el("h2", { text: own ? `${label} · ${title}` : title }));
    parent.append(s);
    return s;
  };
  const select = (sid, options, value, onchange) => {
    const s = el("select", { id: sid, "data-testid": sid });
    options.forEach(([v, text]) => s.append(el("option", { value: v, text })));
    s.value = value; s.onchange = () => onchange(s.value);
    return s;
  };
  return { doc, M, G, P, I, H, C: M.classes, n: I.labels.length, nh, state, shown, draw, slice, trust,
           mainMap, attnRow, READ, tokenHere, app, id, label, section, select, images: await loadImages(I.src),
           renderAll: () => {}, linked: () => {} };
}
