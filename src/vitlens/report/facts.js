// The run's facts: test accuracy, the params that differ from params.yaml, loss and
// accuracy per epoch, faithfulness, mean attention distance.
const fmt = (c) => typeof c === "number" ? (Number.isInteger(c) ? String(c) : c.toFixed(3)) : String(c);
function table(header, rows, cellStyle = () => "") {
  return el("table", {}, el("tr", {}, ...header.map((h) => el("th", { text: h }))),
    ...rows.map((r) => el("tr", {}, ...r.map((c, j) => el("td", { text: fmt(c), style: cellStyle(c, j) })))));
}
// Per-epoch series on inline SVG, with the axes' ranges as tick labels: `series` is
// [{ name, rows, key }], the `key` column of history `rows` (at most two: blue, then orange).
function plot(series, title) {
  const W = 320, Hh = 170, L = 44, R = 10, T = 26, B = 28, ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", Hh); svg.setAttribute("data-testid", "curve");
  const xs = series.flatMap((s) => s.rows.map((r) => r.epoch));
  const ys = series.flatMap((s) => s.rows.map((r) => r[s.key])).filter(Number.isFinite);
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
  series.forEach(({ name, rows, key }, i) => {
    const col = ["#2a6fdb", "#e07b00"][i];
    const pts = rows.filter((r) => Number.isFinite(r[key])).map((r) => `${sx(r.epoch)},${sy(r[key])}`);
    add("polyline", { fill: "none", stroke: col, "stroke-width": 2, points: pts.join(" ") });
    add("text", { x: W - R - 120 + 62 * i, y: 14, "font-size": 11, fill: col }, name);
  });
  return svg;
}
const curves = (hist, keys, title) => plot(keys.map((key) => ({ name: key, rows: hist, key })), title);
function heat(rows) {  // a table whose cells are coloured by value, min to max
  const vals = rows.flat(), lo = Math.min(...vals), span = Math.max(1e-9, Math.max(...vals) - lo);
  return (c, j) => {
    if (j === 0) return "";
    const t = (parseFloat(c) - lo) / span, [r, g, b] = colour(0.15 + 0.8 * t);
    return `background: rgb(${r},${g},${b}); color: ${t > 0.55 ? "#000" : "#fff"}`;
  };
}
function factsView(X) {
  const f = X.doc.facts, box = X.section("facts-section", "The run");
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
