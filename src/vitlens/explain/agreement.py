"""How alike two models' maps of the same images are: `vitlens compare`'s per-image agreement.

Two numbers per image, both over the patches of the two rollouts:
- `spearman`: the rank correlation of the two maps (Pearson's r of their ranks, ties given
  their mean rank), in [-1, 1]. Ranks, not values: a deeper or longer-trained model's rollout
  is sharper or flatter, and that scale says nothing about *where* it looks; 1 means both
  order every patch alike, 0 no relation, below 0 that one looks where the other does not.
- `overlap`: the share of A's top-k patches that are also among B's top-k (intersection / k,
  k = `top_k(P)`, a tenth of the patches). The rank correlation weighs every patch alike and
  most are background of little weight; the few patches a user's eye goes to first (and a
  deletion score removes first) are the top ones. Intersection over k, not Jaccard, so that it
  reads as "k of A's top patches, this share also B's".
Maps on different patch grids (another patch size) are compared on the finer common grid
(`common_grid`), each patch's value repeated over the cells it covers.
"""
from __future__ import annotations

import math

import numpy as np

TOP_SHARE = 0.1  # the top-k overlap's k, as a share of the patches


def top_k(patches: int) -> int:
    return max(1, math.ceil(TOP_SHARE * patches))


def repeat(m: np.ndarray, f: int) -> np.ndarray:
    """(..., g, g) -> (..., f g, f g), each value repeated over f x f cells."""
    return m.repeat(f, axis=-2).repeat(f, axis=-1)


def common_grid(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, ga, ga) and (n, gb, gb) maps -> both (n, g, g) with g = lcm(ga, gb), nearest."""
    ga, gb = a.shape[-1], b.shape[-1]
    g = math.lcm(ga, gb)
    return repeat(a, g // ga), repeat(b, g // gb)


def ranks(x: np.ndarray) -> np.ndarray:
    """(n, P) -> the average rank (0-based) of each value within its row."""
    out = np.empty(x.shape, dtype=np.float64)
    for i, row in enumerate(x):
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # rank of each distinct value's first
        out[i] = (first + (counts - 1) / 2)[inverse]
    return out


def top_patches(x: np.ndarray, k: int) -> np.ndarray:
    """(n, P) -> (n, k) indices of the k largest per row, ties to the lower index (as the page's
    argsort)."""
    return np.argsort(-x, axis=1, kind="stable")[:, :k]


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of (n, g, g) maps `a` and `b`: {"spearman": (n,), "overlap": (n,)}."""
    a, b = common_grid(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    fa, fb = a.reshape(len(a), -1), b.reshape(len(b), -1)
    ra, rb = ranks(fa), ranks(fb)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    # A constant map has no order: it agrees with nothing (0), not NaN.
    spearman = np.where(den > 0, (ra * rb).sum(axis=1) / np.maximum(den, 1e-300), 0.0)
    k = top_k(fa.shape[1])
    ta, tb = top_patches(fa, k), top_patches(fb, k)
    overlap = np.array([len(set(x) & set(y)) / k for x, y in zip(ta.tolist(), tb.tolist())])
    return {"spearman": spearman, "overlap": overlap}
