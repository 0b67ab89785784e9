"""Every map the project draws or scores, from one explicit-attention pass: `compute_maps`.

Maps are (B, grid, grid) relevance over the patches, higher = more relevant, in their natural
units (a share of attention or relevance, summing to 1 for the rollouts):
- rollout: attention rollout, class-agnostic (attention.rollout_map);
- grad_rollout: gradient-weighted rollout for the predicted class (Chefer et al., 2021);
- heads: the last layer's attention over the patches, per head; last_layer is their mean;
each read from the row of what the head reads: the CLS token, or the mean of the patch
tokens under model.pool=mean (attention.readout_row);
- random: uniform noise, seeded; the floor every map must beat in the faithfulness scores.
`attns` keeps every layer's (B, heads, N, N) weights for the views that need all of them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vitlens.config import FAITHFULNESS_METHODS
from vitlens.explain.attention import (
    gradient_rollout_map,
    head_maps,
    mean_attention_distance,
    rollout_map,
)
from vitlens.model.vit import ViT


@dataclass
class Maps:
    logits: Tensor  # (B, classes) float32
    rollout: Tensor  # (B, g, g)
    heads: Tensor  # (B, heads, g, g), last layer, the readout's row
    attns: list[Tensor]  # per layer (B, heads, N, N), detached
    grad_rollout: Tensor | None = None  # (B, g, g), for the predicted class; None without grad

    @property
    def last_layer(self) -> Tensor:
        """(B, g, g) the last layer's readout attention averaged over heads."""
        return self.heads.mean(dim=1)

    def by_name(self, method: str) -> Tensor:
        """One of the scored methods but random: rollout, grad_rollout or last_layer."""
        m = {"rollout": self.rollout, "grad_rollout": self.grad_rollout,
             "last_layer": self.last_layer}[method]
        if m is None:
            raise ValueError(f"{method} was not computed: call compute_maps with grad=True")
        return m


def compute_maps(model: ViT, x: Tensor, *, grad: bool = True, target: Tensor | None = None) -> Maps:
    """Every map of normalised images x (B, 3, H, W) from one pass of the explicit-attention
    path in eval mode; with `grad`, also its backward for the gradient-weighted rollout of
    `target` (B,) classes (default: the predicted ones).

    The gradient's score is the sum of each image's target logit: in eval mode images do not
    interact, so each image's attention gradients are those of its own logit.
    """
    model.eval()
    rel = None
    if grad:
        with torch.enable_grad():
            logits, attns = model(x.detach(), return_attn=True)
            cls = logits.argmax(dim=1) if target is None else target
            score = logits.gather(1, cls[:, None]).sum()
            grads = torch.autograd.grad(score, attns)  # (B, heads, N, N) per layer
        attns = [a.detach() for a in attns]
        rel = gradient_rollout_map(attns, grads, model.grid, pool=model.pool, registers=model.n_registers)
    else:
        with torch.no_grad():
            logits, attns = model(x, return_attn=True)
    return Maps(logits=logits.detach().float(),
                rollout=rollout_map(attns, model.grid, pool=model.pool, registers=model.n_registers),
                heads=head_maps(attns[-1], model.grid, pool=model.pool, registers=model.n_registers),
                attns=attns,
                grad_rollout=rel)


def random_maps(n: int, grid: int, seed: int) -> Tensor:
    """(n, grid, grid) uniform noise from its own generator: the same maps for the same seed,
    whatever else drew random numbers before."""
    return torch.rand(n, grid, grid, generator=torch.Generator().manual_seed(seed))


def explanation_maps(model: ViT, x: Tensor, methods: Sequence[str], *, seed: int,
                     batch_size: int) -> dict[str, Tensor]:
    """{method: (N, grid, grid) float32 on the CPU} for normalised images x (N, 3, H, W), in
    batches of `batch_size`; only the order of a map's patches matters to the faithfulness
    scores."""
    unknown = set(methods) - set(FAITHFULNESS_METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {FAITHFULNESS_METHODS}")
    parts: dict[str, list[Tensor]] = {m: [] for m in methods if m != "random"}
    if parts:
        for xb in x.split(batch_size):
            maps = compute_maps(model, xb, grad="grad_rollout" in parts)
            for m in parts:
                parts[m].append(maps.by_name(m).float().cpu())
    out = {m: torch.cat(p) for m, p in parts.items()}
    if "random" in methods:
        out["random"] = random_maps(len(x), model.grid, seed)
    return {m: out[m] for m in methods}


def mean_attention_distance_over(model: ViT, batches: Sequence[Tensor]) -> Tensor:
    """Mean attention distance in pixels (L, heads) over normalised image batches, weighted
    by their sizes."""
    if not batches:
        raise ValueError("mean_attention_distance_over needs at least one batch")
    sums = [mean_attention_distance(compute_maps(model, x, grad=False).attns, model.grid,
                                    model.patch_size, registers=model.n_registers) * len(x)
            for x in batches]
    return torch.stack(sums).sum(dim=0) / sum(len(x) for x in batches)
