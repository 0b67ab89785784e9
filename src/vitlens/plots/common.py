"""What every figure shares: the colours, the checks on what is drawn, the image and map
drawing, and `save_figure`, which writes a PNG atomically and frees the figure.

Images are uint8 (n, 3, H, W), channels first, de-normalised raw pixels; maps arrive already
upsampled to image pixels. Shape mismatches are programming errors and raise ValueError.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from vitlens.io import atomic_path

DPI = 120
MAP_CMAP = "inferno"
MAP_ALPHA = 0.6
ATTENTION_LABEL = "attention (share)"
GRID_COLUMNS = 8
RIGHT, WRONG = "tab:green", "tab:red"


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write `fig` as a PNG to `path` atomically, then free it (also when saving fails)."""
    try:
        with atomic_path(path) as tmp:
            # The temporary name ends in .tmp, so the format cannot be inferred from it.
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        free(fig)


def free(fig: Figure) -> None:
    # A figure a caller made with pyplot stays in its registry until closed; ours are not
    # registered, and clearing drops their artists (and the arrays they hold) right away.
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()


def check_images(images: np.ndarray, *per_image: Sequence) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (n, 3, H, W), got shape {images.shape}")
    if len(images) == 0:
        raise ValueError("no images to draw")
    if any(len(seq) != len(images) for seq in per_image):
        raise ValueError(f"per-image arguments must all have {len(images)} entries")


def check_maps(images: np.ndarray, maps: np.ndarray) -> None:
    want = (len(images), *images.shape[2:])
    if maps.shape != want:
        raise ValueError(f"maps must be {want} (upsampled to the image), got {maps.shape}")


def extent(img: np.ndarray) -> tuple[float, float, float, float]:
    # Pixel edges, top row first: image and map drawn with the same extent share pixel cells.
    h, w = img.shape[-2:]
    return (0, w, h, 0)


def show_image(ax: Axes, img: np.ndarray) -> None:
    ax.imshow(img.transpose(1, 2, 0), interpolation="nearest", extent=extent(img))
    ax.set_axis_off()


def overlay(ax: Axes, img: np.ndarray, m: np.ndarray, norm: Normalize | None = None,
             ) -> Normalize:
    """Draw `img` with `m` on top; return the colour scale used (0 to the map's max if none)."""
    if norm is None:
        norm = Normalize(0.0, max(float(m.max()), 1e-12))
    show_image(ax, img)
    ax.imshow(m, cmap=MAP_CMAP, norm=norm, alpha=MAP_ALPHA, interpolation="nearest",
              extent=extent(img))
    return norm


def colorbar(fig: Figure, norm: Normalize, ax: Axes | list[Axes],
              label: str = ATTENTION_LABEL) -> None:
    # An opaque bar: one built from the translucent overlay would show washed-out colours.
    bar = fig.colorbar(ScalarMappable(norm, MAP_CMAP), ax=ax, shrink=0.9, aspect=15)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def overlay_strip(images: np.ndarray, maps: np.ndarray, *, scale: int = 4) -> np.ndarray:
    """uint8 (S*scale, n*S*scale, 3): each image with its map blended on top, side by side; a
    plain array (no Figure), cheap enough to log every epoch. Each map is scaled to its max."""
    check_images(images)
    check_maps(images, maps)
    peak = np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)
    colour = colormaps[MAP_CMAP](maps / peak)[..., :3]  # (n, S, S, 3) in [0, 1]
    base = images.transpose(0, 2, 3, 1) / 255.0
    blend = (1 - MAP_ALPHA) * base + MAP_ALPHA * colour
    strip = np.concatenate(list(blend), axis=1)  # (S, n*S, 3)
    strip = strip.repeat(scale, axis=0).repeat(scale, axis=1)
    return (strip * 255).round().astype(np.uint8)
