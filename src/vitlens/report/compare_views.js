// The compare page's own views (vitlens compare A B): what relates two models' contexts
// (core.js), each built on the compare context K = { D, A, B, state, shown }: D the compare
// document (vitlens.report.compare), A and B the models' explorer contexts sharing `state`.
// The agreement numbers are Python's (vitlens.explain.agreement), shown as computed; the
// difference maps are drawn from the two models' maps here.

// A g x g map on a finer `to` x `to` grid (`to` a multiple of g), each value repeated.
function resample(values, g, to) {
  if (g === to) return Array.from(values);
  const f = to / g, out = new Array(to * to);
  for (let p = 0; p < to * to; p++) out[p] = values[Math.floor(Math.floor(p / to) / f) * g + Math.floor((p % to) / f)];
  return out;
}
const difference = (K, va, vb) => {  // A - B on the common grid
  const g = K.D.meta.grid, a = resample(va, K.A.G, g), b = resample(vb, K.B.G, g);
  return a.map((v, p) => v - b[p]);
};
const reachOf = (vals) => Math.max(1e-12, ...vals.map(Math.abs));
const agreementText = (rho, overlap, k) => `rank correlation ${rho.toFixed(3)} · top-${k} overlap ${overlap.toFixed(3)}`;

// Which of the two got image k right: "both", "a" (A only), "b" (B only) or "neither".
function outcomeOf(K, k) {
  const t = K.A.I.truth[k], a = K.A.I.pred[k] === t, b = K.B.I.pred[k] === t;
  return a && b ? "both" : a ? "a" : b ? "b" : "neither";
}

// The gallery (gallery.js) of the shared images, least alike first, filtered by outcome.
function compareGallery(K) {
  const { D, A, B } = K, ag = D.agreement, C = A.C, counts = { both: 0, a: 0, b: 0, neither: 0 };
  for (let k = 0; k < A.n; k++) counts[outcomeOf(K, k)]++;
  return galleryView(A, {
    order: argsort(ag.spearman.map((v) => -v)),
    outcomes: [["all", "every outcome"], ["both", `both right (${counts.both})`], ["a", `A right only (${counts.a})`],
               ["b", `B right only (${counts.b})`], ["neither", `both wrong (${counts.neither})`]],
    outcome: (k) => outcomeOf(K, k),
    wrong: (k) => outcomeOf(K, k) !== "both",
    caption: (k) => `${C[A.I.truth[k]]}: A ${C[A.I.pred[k]]} · B ${C[B.I.pred[k]]}`,
    detail: (k) => `ρ ${ag.spearman[k].toFixed(2)} · top ${ag.overlap[k].toFixed(2)}`,
  });
}

// The selected image's map of A minus the same map of B (red: A looks more, blue: B), and
// the agreement of their rollouts.
function diffView(K, parent) {
  const { D, A, B, state, shown } = K, g = D.meta.grid;
  const sec = A.section("diff-section", "A − B: the selected map's difference (red: A looks more there; blue: B)", parent);
  const canvas = el("canvas", { class: "big", id: "diff-map", "data-testid": "diff-map" });
  const info = el("div", { class: "probs", id: "diff-info" });
  const agree = el("p", { id: "agreement", "data-testid": "agreement" });
  sec.append(agree, el("div", { class: "row" }, canvas, info));
  return function render() {
    const k = state.k, va = A.mainMap(k, state.map), vb = B.mainMap(k, state.map);
    const rho = D.agreement.spearman[k], ov = D.agreement.overlap[k];
    agree.textContent = `${A.I.labels[k]}, rollouts: ${agreementText(rho, ov, D.meta.top_k)}`;
    shown.agreement = { k, spearman: rho, overlap: ov };
    info.textContent = "";
    if (!va || !vb) {
      canvas.width = canvas.height = 288;
      info.append(el("div", { text: `${va ? "B" : "A"} has no ${state.map.replace(":", " ")}` }));
      shown.diff = { k, kind: state.map, values: null };
      return;
    }
    const d = difference(K, va, vb), reach = reachOf(d);
    A.draw(canvas, null, d, { range: [-reach, reach], diverge: true, grid: g });
    shown.diff = { k, kind: state.map, grid: g, values: d };
    const C = A.C, t = A.I.truth[k];
    info.append(el("div", { text: `truth: ${C[t]}` }),
      el("div", { text: `A: ${C[A.I.pred[k]]} ${pct(A.I.conf[k])}` }), el("div", { text: `B: ${C[B.I.pred[k]]} ${pct(B.I.conf[k])}` }),
      el("div", { class: "muted", text: `±${reach.toPrecision(2)} at full colour` }));
  };
}

// Per class: A's mean rollout minus B's (one scale for all classes) and the mean agreement of
// the class's images; a click shows the class in the gallery.
function classCompareView(K, parent) {
  const { D, A, B, state, shown } = K, g = D.meta.grid, C = A.C, CA = D.class_agreement;
  const sec = A.section("class-diff-section", "A − B per class: mean rollouts' difference and the images' agreement", parent);
  const ma = unpack(A.doc.class_means.maps), mb = unpack(B.doc.class_means.maps);
  const diffs = C.map((_c, i) => difference(K, A.slice(ma, i, A.P), B.slice(mb, i, B.P)));
  const reach = reachOf(diffs.flat());
  shown.classDiff = diffs; shown.classAgreement = C.map((_c, i) => ({ spearman: CA.spearman[i], overlap: CA.overlap[i] }));
  const grid = el("div", { class: "class-grid", id: "class-diff" });
  C.forEach((c, i) => {
    const cv = el("canvas");
    A.draw(cv, null, diffs[i], { px: 96, range: [-reach, reach], diverge: true, grid: g });
    const rho = CA.spearman[i], text = rho === null ? "no image" : `ρ ${rho.toFixed(3)} · top ${CA.overlap[i].toFixed(3)}`;
    const cell = el("div", { class: "cell" + (i === D.summary.lowest_class ? " lowest" : ""), "data-testid": "class-diff",
                             "data-class": i, title: `${c}: click to show its images in the gallery` },
      cv, el("div", { class: "name", text: `${c} (n=${CA.counts[i]})` }), el("div", { text }));
    cell.onclick = () => { state.cls = String(i); A.renderAll(); document.getElementById("gallery-section").scrollIntoView(); };
    grid.append(cell);
  });
  sec.append(grid);
}

// The sentence a user can quote, and the outcomes of the shown images.
function summaryView(K, parent) {
  const { D, A, state, shown } = K, S = D.summary, M = D.meta, C = A.C, CA = D.class_agreement;
  const sec = A.section("summary-section", "Where the two look alike", parent);
  const text = `Over ${S.images} test images the two rollouts' rank correlation averages ${S.spearman.toFixed(3)} ` +
    `(1: both order the patches alike; 0: no relation), and ${pct(S.overlap)} of A's top ${M.top_k} patches are ` +
    `among B's. Least alike: the class ${C[S.lowest_class]} (${CA.spearman[S.lowest_class].toFixed(3)}), and among ` +
    `the images below ${A.I.labels[S.lowest_image]} (${D.agreement.spearman[S.lowest_image].toFixed(3)}).`;
  const show = el("button", { id: "show-lowest", "data-testid": "show-lowest", text: "show the least alike image" });
  show.onclick = () => { state.k = S.lowest_image; A.renderAll(); };
  sec.append(el("p", { "data-testid": "summary", text }), show);
  shown.summary = text;
}

// Both runs' facts side by side.
function compareFactsView(K, parent) {
  const { D, A, B } = K, fa = A.doc.facts, fb = B.doc.facts, C = A.C;
  const sec = A.section("compare-facts", "The two runs", parent);
  const show = (v) => v === null || v === undefined ? "—" : JSON.stringify(v);
  const diff = D.meta.params_diff || [];
  sec.append(el("h3", { text: "Params that differ" }), diff.length
    ? table(["param", "A", "B"], diff.map(([k, a, b]) => [k, show(a), show(b)])) : el("p", { class: "muted", text: "none" }));
  const acc = (f) => f.test_accuracy === null ? "—" : pct(f.test_accuracy);
  const perA = fa.per_class_accuracy || {}, perB = fb.per_class_accuracy || {};
  sec.append(el("h3", { text: "Test accuracy" }), table(["", "A", "B"], [
    ["all classes", acc(fa), acc(fb)],
    ...C.map((c) => [c, c in perA ? pct(perA[c]) : "—", c in perB ? pct(perB[c]) : "—"])]));
  const series = (key) => [{ name: `A ${key}`, rows: fa.history, key }, { name: `B ${key}`, rows: fb.history, key }];
  if (fa.history.length || fb.history.length) sec.append(el("h3", { text: "Per epoch" }), el("div", { class: "row" },
    plot(series("val_acc"), "validation accuracy"), plot(series("val_loss"), "validation loss")));
  if (fa.faithfulness || fb.faithfulness) {
    const ms = [...new Set([...Object.keys(fa.faithfulness || {}), ...Object.keys(fb.faithfulness || {})])];
    const get = (f, m, key) => f.faithfulness && f.faithfulness[m] ? f.faithfulness[m][key] : "—";
    sec.append(el("h3", { text: "Faithfulness (deletion AUC: lower is better; insertion AUC: higher)" }),
      table(["method", "A deletion", "B deletion", "A insertion", "B insertion"],
        ms.map((m) => [m, get(fa, m, "deletion_auc"), get(fb, m, "deletion_auc"), get(fa, m, "insertion_auc"), get(fb, m, "insertion_auc")])));
  }
  const scale = heat([...(fa.distance || []), ...(fb.distance || [])]);  // one colour scale for both
  const dist = (name, d) => d ? el("div", {}, el("b", { text: name }),
    table(["layer", ...d[0].map((_, h) => `head ${h + 1}`)], d.map((r, l) => [`layer ${l + 1}`, ...r.map((v) => v.toFixed(1))]), scale))
    : el("p", { class: "muted", text: `${name}: not measured` });
  sec.append(el("h3", { text: "Mean attention distance (pixels) per layer and head" }),
    el("div", { class: "row" }, dist("A", fa.distance), dist("B", fb.distance)));
}
