"""Do the maps show what the model uses? Deletion and insertion scores (RISE, Petsiuk et al.
2018) over the model's patches.

A map ranks the patches, most relevant first. Deletion replaces them in that order with the
per-channel mean (zero after normalisation); insertion starts from a blurred copy and puts
the original patches back in that order. After each of `steps` equal steps the softmax
probability of the class predicted for the intact image is read, so a curve has steps + 1
points, from nothing changed to everything changed. Its area (a normalised trapezoid, in
[0, 1]) is the score: a faithful map makes deletion fall fast (low AUC) and insertion rise
fast (high AUC).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from vitlens.device import autocast
from vitlens.explain.attention import upsample_map

KINDS = ("deletion", "insertion")


@dataclass
class Curves:
    deletion: Tensor  # (N, steps + 1) probability of the predicted class, on the CPU
    insertion: Tensor  # (N, steps + 1)


def gaussian_blur(x: Tensor, kernel: int, sigma: float) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W), a separable Gaussian per channel. Reflect padding: zero
    padding would pull the borders toward the mean colour, and the border patches would
    then look already deleted."""
    if kernel % 2 == 0 or kernel // 2 >= min(x.shape[-2:]):
        raise ValueError(f"blur kernel {kernel} must be odd and under twice the image size")
    half, c = kernel // 2, x.shape[1]
    t = torch.arange(kernel, dtype=x.dtype, device=x.device) - half
    w = torch.exp(-t**2 / (2 * sigma**2))
    w = w / w.sum()
    x = F.pad(x, (half,) * 4, mode="reflect")
    x = F.conv2d(x, w.view(1, 1, 1, kernel).expand(c, 1, 1, kernel), groups=c)  # along rows
    return F.conv2d(x, w.view(1, 1, kernel, 1).expand(c, 1, kernel, 1), groups=c)  # columns


def step_counts(patches: int, steps: int) -> Tensor:
    """(steps + 1,) patches changed after each step: evenly spaced from 0 to all."""
    if not 1 <= steps <= patches:
        raise ValueError(f"steps={steps} must be between 1 and the {patches} patches")
    return torch.linspace(0, patches, steps + 1).round().long()


def patch_ranks(maps: Tensor) -> Tensor:
    """(B, g, g) maps -> (B, g*g) each patch's place in the order, 0 = most relevant.
    Ties go to the lower patch index, so equal maps give equal curves."""
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    return order.argsort(dim=1)


def path_variants(start: Tensor, end: Tensor, ranks: Tensor, counts: Tensor) -> Tensor:
    """(B, T, C, H, W): variant t is `start` with its counts[t] top-ranked patches from `end`.

    start, end (B, C, H, W); ranks (B, P) from patch_ranks; counts (T,).
    """
    b, p = ranks.shape
    g = round(p**0.5)
    take = ranks[:, None, :] < counts.to(ranks.device)[None, :, None]  # (B, T, P)
    mask = upsample_map(take.view(b, len(counts), g, g), start.shape[-1])[:, :, None]
    return torch.where(mask, end[:, None], start[:, None])


@torch.inference_mode()
def logits_of(model: nn.Module, x: Tensor, bf16: bool) -> Tensor:
    """(B, classes) float32 logits through the fused attention path (no weights kept)."""
    with autocast(x.device, bf16):
        return model(x).float()


def class_probability(model: nn.Module, x: Tensor, target: Tensor, bf16: bool) -> Tensor:
    """(B,) softmax probability of class target[i] for image x[i]."""
    return logits_of(model, x, bf16).softmax(dim=1).gather(1, target[:, None])[:, 0]


def faithfulness_curves(model: nn.Module, x: Tensor, maps: Mapping[str, Tensor], *, steps: int,
                        blur_kernel: int, blur_sigma: float, batch_size: int, bf16: bool,
                        progress: bool = False) -> tuple[Tensor, dict[str, Curves]]:
    """Predicted class (N,) of normalised images x (N, C, H, W) and every method's curves.

    `maps` holds (N, g, g) relevance per method; `bf16` is the model's precision. The curves'
    ends (the image, the mean image, the blurred image) are the same for every method and are
    scored once; one forward pass scores the steps - 1 inner variants of `batch_size` images
    for one method and kind.
    """
    model.eval()
    patches = next(iter(maps.values()))[0].numel()
    inner = step_counts(patches, steps)[1:-1]  # (steps - 1,)
    out: dict[str, dict[str, list[Tensor]]] = {m: {k: [] for k in KINDS} for m in maps}
    targets = []
    bar = tqdm(total=len(x), desc="faithfulness", unit="img", disable=not progress)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        tb = logits_of(model, xb, bf16).argmax(dim=1)
        paths = {"deletion": (xb, torch.zeros_like(xb)),
                 "insertion": (gaussian_blur(xb, blur_kernel, blur_sigma), xb)}
        ends = {k: class_probability(model, torch.cat(p), tb.repeat(2), bf16).view(2, -1, 1)
                for k, p in paths.items()}  # (start, end) x (B, 1)
        for method, m in maps.items():
            ranks = patch_ranks(m[i:i + batch_size].to(x.device))
            for kind, (start, end) in paths.items():
                v = path_variants(start, end, ranks, inner).flatten(0, 1)  # (B * (T - 2), C, H, W)
                p = class_probability(model, v, tb.repeat_interleave(len(inner)), bf16)
                out[method][kind].append(torch.cat([ends[kind][0], p.view(len(xb), -1),
                                                    ends[kind][1]], dim=1).cpu())
        targets.append(tb.cpu())
        bar.update(len(xb))
    bar.close()
    return torch.cat(targets), {m: Curves(*(torch.cat(c[k]) for k in KINDS)) for m, c in out.items()}


def auc(curves: Tensor) -> Tensor:
    """(..., T) -> (...): area under curves sampled at T evenly spaced points of [0, 1]."""
    if curves.shape[-1] < 2:
        raise ValueError("a curve needs at least two points")
    inner = curves.sum(dim=-1) - (curves[..., 0] + curves[..., -1]) / 2
    return inner / (curves.shape[-1] - 1)


def bootstrap_interval(values: np.ndarray, *, samples: int, confidence: float,
                       seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (N,), resampling the N images.
    The same seed draws the same resamples for every method, so intervals are paired."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (samples, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def summarize_curves(curves: Mapping[str, Curves], *, samples: int, confidence: float,
              seed: int) -> dict[str, dict[str, float]]:
    """{method: {deletion_auc, deletion_low, deletion_high, insertion_auc, ...}}: the mean
    AUC over images and its bootstrap interval."""
    out = {}
    for method, c in curves.items():
        row: dict[str, float] = {}
        for kind in KINDS:
            per_image = auc(getattr(c, kind)).double().numpy()
            lo, hi = bootstrap_interval(per_image, samples=samples, confidence=confidence, seed=seed)
            row |= {f"{kind}_auc": float(per_image.mean()), f"{kind}_low": lo, f"{kind}_high": hi}
        out[method] = row
    return out
