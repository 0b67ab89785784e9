"""Figures of the faithfulness stage: the mean deletion/insertion curves per method, and the
methods' maps side by side on a few images. Built like every figure in `vitlens.plots.figures`
(Figure, not pyplot; saved with `vitlens.plots.common.save_figure`), from numpy arrays."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from vitlens.plots.common import WRONG, check_images, check_maps, colorbar, overlay, show_image

LABELS = {"rollout": "attention rollout", "grad_rollout": "gradient-weighted rollout",
          "last_layer": "last-layer attention", "random": "random (baseline)"}
AXES = {"deletion": ("share of patches deleted (most relevant first)", "lower is better"),
        "insertion": ("share of patches put back (most relevant first)", "higher is better")}


def curves_figure(fraction: np.ndarray, curves: Mapping[str, Mapping[str, np.ndarray]],
                  summary: Mapping[str, Mapping[str, float]], *, images: int,
                  confidence: float) -> Figure:
    """Mean probability of the predicted class vs the share of patches changed.

    `curves[kind][method]` is the (T,) mean curve at `fraction` (T,) for kind deletion or
    insertion; `summary[method]` holds `<kind>_auc`, `<kind>_low`, `<kind>_high`.
    """
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    for ax, (kind, by_method) in zip(fig.subplots(1, 2), curves.items()):
        for method, curve in by_method.items():
            if len(curve) != len(fraction):
                raise ValueError(f"{kind} curve of {method} has {len(curve)} points, "
                                 f"expected {len(fraction)}")
            s = summary[method]
            label = (f"{LABELS.get(method, method)}: AUC {s[f'{kind}_auc']:.3f} "
                     f"[{s[f'{kind}_low']:.3f}, {s[f'{kind}_high']:.3f}]")
            style = {"linestyle": "--", "color": "grey"} if method == "random" else {"marker": "."}
            ax.plot(fraction, curve, label=label, **style)
        xlabel, better = AXES[kind]
        ax.set(xlabel=xlabel, ylabel="probability of the predicted class",
               title=f"{kind} ({better})", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Do the maps show what the model uses? Mean over {images} test images; "
                 f"AUC with {confidence:.0%} bootstrap interval")
    return fig


def methods_figure(images: np.ndarray, maps: Mapping[str, np.ndarray], titles: Sequence[str],
                   scores: Mapping[str, np.ndarray], *, flags: Mapping[str, str] | None = None,
                   title: str = "Explanation maps side by side") -> Figure:
    """Per image: the image, then each method's map overlaid, titled with that image's
    deletion / insertion AUC. `maps[method]` is (n, H, W) at image resolution; `scores[method]`
    is (n, 2): deletion and insertion AUC per image. Each map has its own colour scale: the
    methods' units differ, and only the order of the patches is scored. `flags[method]`, a
    warning such as a high position bias, ends that method's titles, in red."""
    check_images(images, titles)
    for method, m in maps.items():
        check_maps(images, m)
        if scores[method].shape != (len(images), 2):
            raise ValueError(f"scores of {method} must be (n, 2), got {scores[method].shape}")
    n, cols = len(images), len(maps) + 1
    fig = Figure(figsize=(2.3 * cols + 0.6, 2.4 * n + 0.6), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for i, (row, img, name) in enumerate(zip(axes, images, titles)):
        show_image(row[0], img)
        row[0].set_title(name, fontsize=9)
        for ax, (method, m) in zip(row[1:], maps.items()):
            colorbar(fig, overlay(ax, img, m[i]), ax, label="relevance")
            d, ins = scores[method][i]
            flag = (flags or {}).get(method)
            ax.set_title(f"{LABELS.get(method, method)}\ndel {d:.2f}  ins {ins:.2f}"
                         + (f"\n\u26a0 {flag}" if flag else ""), fontsize=8,
                         **({"color": WRONG} if flag else {}))
    fig.suptitle(title)
    return fig
