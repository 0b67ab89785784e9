"""The pipeline's figures (visualize, evaluate, predict): numpy arrays in, a matplotlib Figure
out; `vitlens.plots.common.save_figure` writes them.

Figures are built with `matplotlib.figure.Figure` directly rather than pyplot, so nothing
registers in pyplot's global figure list (no leaks across a long stage, no GUI backend) and
PNG output goes through Agg regardless of the configured backend.

Nothing here computes attention: maps arrive already upsampled to image pixels
(`vitlens.explain.attention.upsample_map`) and are only drawn. Images are uint8 (n, 3, H, W),
channels first, de-normalised raw pixels. Shape mismatches are programming errors and raise
ValueError.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vitlens.plots.common import (
    GRID_COLUMNS,
    RIGHT,
    WRONG,
    check_images,
    check_maps,
    colorbar,
    overlay,
    show_image,
)


def training_curves(history: Sequence[dict[str, float]], *,
                    title: str = "Training curves") -> Figure:
    """Loss and accuracy per epoch, train vs validation; accuracies are fractions in [0, 1]."""
    if not history:
        raise ValueError("training_curves needs at least one epoch of history")
    epochs = [row.get("epoch", i) for i, row in enumerate(history, 1)]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for split in ("train", "val"):
        label = "train" if split == "train" else "validation"
        loss_ax.plot(epochs, [r[f"{split}_loss"] for r in history], marker="o", label=label)
        acc_ax.plot(epochs, [100 * r[f"{split}_acc"] for r in history], marker="o", label=label)
    for ax, name in ((loss_ax, "loss (cross-entropy)"), (acc_ax, "accuracy (%)")):
        ax.set(xlabel="epoch", ylabel=name, title=name.split(" ")[0])
        # Half an epoch of margin keeps a single epoch from getting fractional ticks.
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


def image_grid(images: np.ndarray, labels: Sequence[str], *,
               title: str = "Test images") -> Figure:
    """Images in rows of up to 8, each titled with its class name."""
    check_images(images, labels)
    n = len(images)
    cols = min(n, GRID_COLUMNS)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.6 * cols + 0.4, 1.7 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, img, label in zip(axes, images, labels):
        show_image(ax, img)
        ax.set_title(label, fontsize=10)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def attention_overlays(images: np.ndarray, truth: Sequence[str], pred: Sequence[str],
                       confidence: Sequence[float], maps: np.ndarray, *,
                       grad_maps: np.ndarray | None = None,
                       title: str = "Where the model looks") -> Figure:
    """Per image: the image with its true class, with the prediction, and with its map overlaid
    (and, given `grad_maps`, the gradient-weighted rollout for the predicted class beside it).

    `confidence` is the predicted class's probability in [0, 1]; `maps` and `grad_maps` are
    (n, H, W) at image resolution. The prediction title is green when right and red when wrong.
    """
    check_images(images, truth, pred, confidence)
    check_maps(images, maps)
    if grad_maps is not None:
        check_maps(images, grad_maps)
    if any(not 0 <= c <= 1 for c in confidence):
        raise ValueError("confidence must be probabilities in [0, 1], not percentages")
    n = len(images)
    cols = 3 if grad_maps is None else 4
    fig = Figure(figsize=(2.9 * cols, 2.7 * n + 0.5), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for i, (row, img, t, p, c, m) in enumerate(zip(axes, images, truth, pred, confidence, maps)):
        show_image(row[0], img)
        row[0].set_title(f"ground truth: {t}", fontsize=10)
        show_image(row[1], img)
        row[1].set_title(f"prediction: {p} ({100 * c:.1f}%)", fontsize=10,
                         color=RIGHT if p == t else WRONG)
        norm = overlay(row[2], img, m)
        row[2].set_title("attention rollout", fontsize=10)
        colorbar(fig, norm, row[2])
        if grad_maps is not None:
            colorbar(fig, overlay(row[3], img, grad_maps[i]), row[3], label="relevance (share)")
            row[3].set_title("gradient-weighted rollout", fontsize=10)
    fig.suptitle(title)
    return fig


def rollout_vs_heads(images: np.ndarray, rollout: np.ndarray, heads: np.ndarray,
                     titles: Sequence[str], *, readout: str = "CLS") -> Figure:
    """Per image: the image, its rollout overlay, then each head's last-layer map of the
    `readout` (what the head reads: "CLS", or "patch-mean" under model.pool=mean).

    `rollout` is (n, H, W), `heads` (n, heads, H, W), both at image resolution. The rollout
    has its own colour bar; the heads of a row share one scale and bar, so their magnitudes
    compare directly. A shared scale with the rollout would be unreadable: a single focused
    head can put most of its attention on one patch, flattening the rollout to black.
    """
    check_images(images, titles)
    check_maps(images, rollout)
    if heads.ndim != 4 or len(heads) != len(images):
        raise ValueError(f"heads must be (n, heads, H, W) for {len(images)} images, "
                         f"got shape {heads.shape}")
    check_maps(images, heads[:, 0])
    n, n_heads = heads.shape[:2]
    fig = Figure(figsize=(2.1 * (n_heads + 2) + 1.4, 2.3 * n + 0.5), layout="constrained")
    axes = fig.subplots(n, n_heads + 2, squeeze=False)
    for row, img, name, roll, maps in zip(axes, images, titles, rollout, heads):
        show_image(row[0], img)
        row[0].set_title(name, fontsize=10)
        roll_norm = overlay(row[1], img, roll)
        colorbar(fig, roll_norm, row[1], label=f"rollout (share of {readout} attention)")
        head_norm = Normalize(0.0, max(float(maps.max()), 1e-12))
        for ax, m in zip(row[2:], maps):
            overlay(ax, img, m, head_norm)
        colorbar(fig, head_norm, list(row[2:]), label=f"{readout} attention (share)")
    axes[0, 1].set_title("rollout", fontsize=10)
    for h, ax in enumerate(axes[0, 2:], 1):
        ax.set_title(f"head {h}", fontsize=10)
    fig.suptitle(f"Attention rollout vs last-layer {readout} attention per head")
    return fig


def attention_distance_plot(dist: np.ndarray, patch_size: int | None = None, *,
                            title: str = "Mean attention distance per head") -> Figure:
    """Mean attention distance (L, heads) in pixels vs depth, one point per head (ViT Fig. 7).

    With `patch_size`, a dashed line marks one patch: the distance of attending only to an
    immediate neighbour, which separates local heads from global ones at a glance.
    """
    if dist.ndim != 2:
        raise ValueError(f"dist must be (layers, heads), got shape {dist.shape}")
    layers, n_heads = dist.shape
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    depth = np.arange(1, layers + 1)
    for h in range(n_heads):
        ax.scatter(depth, dist[:, h], s=36, alpha=0.85, label=f"head {h + 1}")
    if patch_size is not None:
        ax.axhline(patch_size, color="grey", linestyle="--", linewidth=1,
                   label=f"one patch ({patch_size} px)")
    ax.set(xlabel="network depth (layer)", ylabel="mean attention distance (pixels)",
           xticks=depth, ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title)
    return fig


def prediction_overlay(picture: np.ndarray, small: np.ndarray, m: np.ndarray,
                       top: Sequence[tuple[str, float]], *, title: str,
                       map_name: str = "attention rollout") -> Figure:
    """A picture of any source: what the model saw (`small`, (3, S, S)), and the map `m`
    (S, S) stretched over `picture` (3, H, W), the same square crop at a size people can read.
    The title names the top classes with their probabilities in [0, 1]."""
    check_images(small[None])
    check_maps(small[None], m[None])
    fig = Figure(figsize=(7.2, 3.9), layout="constrained")
    seen, where = fig.subplots(1, 2)
    show_image(seen, small)
    seen.set_title(f"what the model sees ({small.shape[-1]}x{small.shape[-2]})", fontsize=9)
    colorbar(fig, overlay(where, picture, m), where)
    where.set_title(map_name, fontsize=9)
    fig.suptitle(f"{title}\n" + ", ".join(f"{c} {100 * p:.1f}%" for c, p in top), fontsize=10)
    return fig
