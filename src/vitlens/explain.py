"""Explanation maps by name, for scoring them against each other: (N, grid, grid) relevance
per method, higher = more relevant. Only the order of a map's patches matters to the
faithfulness metric; the maps are kept in their natural units for drawing.

- rollout: attention rollout, class-agnostic (vitlens.attention.cls_rollout_map);
- grad_rollout: gradient-weighted rollout for the predicted class (Chefer et al., 2021);
- last_layer: the last layer's CLS attention over the patches, averaged over heads;
- random: uniform noise, seeded; the floor every map must beat.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vitlens.attention import cls_attention_maps, cls_rollout_map, gradient_rollout_maps
from vitlens.config import FAITHFULNESS_METHODS
from vitlens.model import ViT


def random_maps(n: int, grid: int, seed: int) -> Tensor:
    """(n, grid, grid) uniform noise from its own generator: the same maps for the same seed,
    whatever else drew random numbers before."""
    return torch.rand(n, grid, grid, generator=torch.Generator().manual_seed(seed))


def _attention_maps(model: ViT, x: Tensor, grad: bool) -> dict[str, Tensor]:
    """rollout, last_layer and (with `grad`) grad_rollout of one batch, from one pass."""
    if grad:
        _, grad_map, attns = gradient_rollout_maps(model, x)
    else:
        with torch.no_grad():
            _, attns = model.eval()(x, return_attn=True)
    maps = {"rollout": cls_rollout_map(attns, model.grid),
            "last_layer": cls_attention_maps(attns[-1], model.grid).mean(dim=1)}
    if grad:
        maps["grad_rollout"] = grad_map
    return maps


def explanation_maps(model: ViT, x: Tensor, methods: Sequence[str], *, seed: int,
                     batch_size: int) -> dict[str, Tensor]:
    """{method: (N, grid, grid) float32 on the CPU} for normalised images x (N, 3, H, W)."""
    unknown = set(methods) - set(FAITHFULNESS_METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {FAITHFULNESS_METHODS}")
    parts: dict[str, list[Tensor]] = {m: [] for m in methods if m != "random"}
    if parts:
        for xb in x.split(batch_size):
            maps = _attention_maps(model, xb, grad="grad_rollout" in parts)
            for m in parts:
                parts[m].append(maps[m].float().cpu())
    out = {m: torch.cat(p) for m, p in parts.items()}
    if "random" in methods:
        out["random"] = random_maps(len(x), model.grid, seed)
    return {m: out[m] for m in methods}
