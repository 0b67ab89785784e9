"""The confusion matrix, readable from 10 classes to a few hundred: counts in the cells up to
CELL_NUMBERS_UP_TO classes, past that a square-root colour scale of each true class's share,
labels sized to the cells, and a table of the most frequent confusions beside it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure

CELL_NUMBERS_UP_TO = 20  # classes: past this the cells carry no counts, a side table the top confusions
MATRIX_INCHES = 0.55, 13.0  # the matrix's side: per class, and at most
LABEL_PT = 5.0, 10.0  # tick label sizes: the smallest (past it, every n-th class is labelled) and largest
TICK_CHARS, TABLE_CHARS = 24, 18  # longer class names are cut on the ticks, in the table
TOP_SHOWN = 20  # confusions the side table lists


def top_confusions(cm: np.ndarray, classes: Sequence[str], n: int = TOP_SHOWN) -> list[dict]:
    """The `n` most frequent mistakes of the confusion matrix `cm` (rows true, columns
    predicted): {"true", "predicted", "count", "share"}, share being the count over the true
    class's images; most frequent first, then the larger share, then in class order."""
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not fit {k} classes")
    off = np.array(cm, copy=True)
    np.fill_diagonal(off, 0)
    true, pred = np.nonzero(off > 0)
    counts, totals = off[true, pred], cm.sum(axis=1)[true]
    share = counts / totals
    order = np.lexsort((pred, true, -share, -counts))[:n]  # the last key sorts first
    return [{"true": classes[true[i]], "predicted": classes[pred[i]], "count": counts[i].item(),
             "share": round(float(share[i]), 4)} for i in order]


def label_layout(k: int) -> tuple[float, float, int]:
    """(the matrix's side in inches, the tick label size in points, label every n-th class)
    for `k` classes: 0.55 inch a class up to 20 classes, then slower, up to 13 inches; labels
    as large as a cell holds, down to 5 points, then on every n-th class."""
    per_class, most = MATRIX_INCHES
    grown = per_class * min(k, CELL_NUMBERS_UP_TO) + 0.03 * max(0, k - CELL_NUMBERS_UP_TO)
    side = min(most, max(3.0, grown))
    cell_pt = 72 * side / max(k, 1)
    size = min(LABEL_PT[1], 0.7 * cell_pt)
    step = math.ceil(LABEL_PT[0] / size) if size < LABEL_PT[0] else 1
    return side, max(size, LABEL_PT[0]), step


def cut(name: str, most: int) -> str:
    """`name`, cut to `most` characters with an ellipsis."""
    return name if len(name) <= most else name[:most - 1] + "…"


def confusion_figure(cm: np.ndarray, classes: Sequence[str], *,
                     title: str = "Confusion matrix") -> Figure:
    """Colour is the row-normalised share, so classes with fewer test images are not drawn
    fainter. Up to 20 classes each cell carries its count; past that the matrix is drawn
    without counts on a square-root scale (a 2% confusion stays visible), with faint lines
    every 10 classes, and a table beside it lists the most frequent confusions. The figure
    grows with the class count up to a limit; past it, every n-th class is labelled (names
    longer than 24 characters are cut). The title carries the overall accuracy."""
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not fit {k} classes")
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
    side, label_pt, step = label_layout(k)
    many = k > CELL_NUMBERS_UP_TO
    ticks = range(0, k, step)
    names = [cut(classes[i], TICK_CHARS) for i in ticks]
    # Room for the longest label (about 0.6 em a character), the axis label and the title.
    room = max(map(len, names), default=1) * 0.6 * label_pt / 72 + 0.6
    table = 4.4 if many else 0.0
    matrix = side + room + 1.6  # with the colour bar beside it
    fig = Figure(figsize=(matrix + table, side + room + 1.2), layout="constrained")
    if many:
        ax, table_ax = fig.subplots(1, 2, width_ratios=[matrix, table])
    else:
        ax = fig.subplots()
    norm = PowerNorm(0.5, vmin=0, vmax=1) if many else Normalize(0, 1)
    im = ax.imshow(share, cmap="Blues", norm=norm, interpolation="nearest")
    if many:
        for b in range(10, k, 10):  # faint lines every 10 classes, to follow a row or column
            ax.axhline(b - 0.5, color="grey", linewidth=0.4, alpha=0.5)
            ax.axvline(b - 0.5, color="grey", linewidth=0.4, alpha=0.5)
        ax.set_xticks(ticks, names, rotation=90, ha="right", va="center", rotation_mode="anchor",
                      fontsize=label_pt)
    else:
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, f"{count:g}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor", fontsize=label_pt)
    ax.set_yticks(ticks, names, fontsize=label_pt)
    ax.tick_params(length=2 if many else 3.5)
    ax.set(xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, shrink=0.6 if many else 1.0,
                 label="share of the true class" + (" (square-root scale)" if many else ""))
    if many:
        confusions_table(table_ax, top_confusions(cm, classes))
    total, correct = cm.sum(), np.trace(cm)
    acc = f"accuracy {correct / total:.1%} ({correct:g}/{total:g})" if total else "no samples"
    fig.suptitle(f"{title}: {acc}" + (f", {k} classes" if many else ""))
    return fig


def confusions_table(ax: Axes, rows: Sequence[dict]) -> None:
    """The most frequent confusions as a table filling `ax` (none: a line saying so)."""
    ax.set_axis_off()
    ax.set_title(f"most frequent confusions (top {len(rows)})" if rows else "no confusions",
                 fontsize=10, loc="left")
    if not rows:
        return
    cells = [[cut(r["true"], TABLE_CHARS), cut(r["predicted"], TABLE_CHARS), f"{r['count']:g}",
              f"{r['share']:.1%}"] for r in rows]
    table = ax.table(cellText=cells, colLabels=["true class", "predicted", "count", "share"],
                     loc="upper left", cellLoc="left", colLoc="left",
                     colWidths=[0.33, 0.33, 0.14, 0.18])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.4)
    for (row, _), cell in table.get_celld().items():
        cell.set_edgecolor("#dddddd")
        if row == 0:
            cell.set_text_props(fontweight="bold")

