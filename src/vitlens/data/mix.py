"""MixUp and CutMix on whole batches (DeiT's recipe: one of the two per batch, at random).

Each image is mixed with its partner in the batch reversed (timm's pairing: no second gather),
and the labels become soft targets in the same ratio: (B, classes) rows summing to 1, which
`F.cross_entropy` takes as class probabilities (label smoothing applies on top).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def beta(alpha: float, generator: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha), seeded from `generator` (torch's Beta takes none, and a
    resumed run must repeat the uninterrupted one)."""
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(x: Tensor, lam: float) -> Tensor:
    """x (B, ...) float: lam of each row plus 1 - lam of its partner, x.flip(0) (images, or
    the one-hot labels that go with them)."""
    return x.mul(lam).add_(x.flip(0), alpha=1 - lam)


def cutmix(x: Tensor, lam: float, generator: torch.Generator) -> tuple[Tensor, float]:
    """x with one box (the same for the batch) pasted from each image's partner, x.flip(0):
    the box covers about 1 - lam of the image, centred at random and clipped to it; returns
    the images and the share of each image's own pixels that is left (the labels' weight)."""
    _, _, h, w = x.shape
    cy, cx = (int(torch.randint(n, (1,), generator=generator, device=generator.device)) for n in (h, w))
    bh, bw = round(h * (1 - lam) ** 0.5), round(w * (1 - lam) ** 0.5)
    top, bottom = max(cy - bh // 2, 0), min(cy + bh - bh // 2, h)
    left, right = max(cx - bw // 2, 0), min(cx + bw - bw // 2, w)
    out = x.clone()
    out[..., top:bottom, left:right] = x.flip(0)[..., top:bottom, left:right]
    return out, 1 - (bottom - top) * (right - left) / (h * w)


def mix_batch(x: Tensor, y: Tensor, classes: int, *, mixup_alpha: float, cutmix_alpha: float,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(images, soft targets (B, classes)) of a batch x (B, C, H, W) float, y (B,): MixUp or
    CutMix, one of the two at random when both alphas are on; their labels mixed in the ratio
    of their pixels. Both alphas 0: x and y as they came."""
    if not (mixup_alpha or cutmix_alpha):
        return x, y
    use_cutmix = cutmix_alpha > 0 and (
        mixup_alpha == 0 or bool(torch.rand(1, generator=generator, device=generator.device) < 0.5))
    lam = beta(cutmix_alpha if use_cutmix else mixup_alpha, generator)
    x, lam = cutmix(x, lam, generator) if use_cutmix else (mixup(x, lam), lam)
    return x, mixup(F.one_hot(y, classes).float(), lam)
