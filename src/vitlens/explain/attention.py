"""The math of where a ViT looks, on attention tensors alone: attention rollout, gradient-weighted
rollout, per-head maps, mean attention distance (the model pass is `vitlens.explain.maps`).

Attention tensors follow the model's convention: one `(B, heads, N, N)` tensor per layer,
row = query, column = key, rows summing to 1. Token 0 is CLS; tokens 1..grid*grid are the
patches of a `grid` x `grid` layout in row-major order, so token `1 + r * grid + c` is the
patch at row r, column c; the last `registers` tokens are registers (model.registers). The
rollouts compose every token, registers too (attention may pass through them), and every map
reads the patch keys alone.

Every map reads the row of the token the head reads (`pool`): the CLS token's row, or, when
the head reads the mean of the patch tokens (model.pool=mean), the mean of the patch rows.
Either way a map says how much each patch reaches what the head reads.

Shape mismatches are programming errors, so they raise ValueError rather than VitlensError.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _check_tokens(attn: Tensor, grid: int, registers: int) -> None:
    n = attn.shape[-1]
    if attn.shape[-2] != n or n != 1 + grid * grid + registers:
        raise ValueError(
            f"attention of shape {tuple(attn.shape)} does not fit a CLS token plus a "
            f"{grid}x{grid} patch grid plus {registers} registers (expected last dims "
            f"{1 + grid * grid + registers})"
        )


def readout_row(m: Tensor, pool: str, patches: int) -> Tensor:
    """(..., N, N) -> (..., patches): the row of what the head reads over the patch keys: the
    CLS query's row (pool "cls") or the mean of the patch queries' rows (pool "mean")."""
    if pool not in ("cls", "mean"):
        raise ValueError(f"unknown pool {pool!r}: cls or mean")
    row = m[..., 0, :] if pool == "cls" else m[..., 1:1 + patches, :].mean(dim=-2)
    return row[..., 1:1 + patches]


def _normalise_last(x: Tensor) -> Tensor:
    """Divide by the sum over the last dim; an all-zero slice stays zero instead of NaN."""
    total = x.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, x / total.clamp_min(torch.finfo(x.dtype).tiny), 0.0)


def _residual_attention(attn: Tensor) -> Tensor:
    """Head-averaged attention mixed half-and-half with the identity for the skip path."""
    a = attn.mean(dim=1)  # (B, N, N)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    # Rows must sum to 1 per query: normalise over keys (dim -1), not over queries.
    return _normalise_last(0.5 * a + 0.5 * eye)


def attention_rollout(attns: Sequence[Tensor]) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) of per-layer `(B, heads, N, N)` weights.

    Returns R = A'_L @ ... @ A'_1 of shape (B, N, N). Layer l maps its input tokens to its
    output tokens by out = A'_l @ in, so composing layers 1..L puts the first layer on the
    right: row i of R is how output token i of the last layer draws on the input tokens.
    """
    if not attns:
        raise ValueError("attention_rollout needs at least one layer")
    rollout = _residual_attention(attns[0])
    for attn in attns[1:]:
        rollout = _residual_attention(attn) @ rollout  # (B, N, N)
    return rollout


def rollout_map(attns: Sequence[Tensor], grid: int, *, pool: str = "cls", registers: int = 0) -> Tensor:
    """The readout row of the rollout over the patches, summing to 1, as a (B, grid, grid) map.

    The entries of the CLS and register keys are dropped and the rest renormalised. If the readout draws
    nothing from the patches (e.g. CLS under identity attention everywhere) the map is all
    zeros, not NaN or a made-up uniform map, so "looks nowhere" stays distinguishable from
    "looks everywhere".
    """
    _check_tokens(attns[0], grid, registers)
    row = readout_row(attention_rollout(attns), pool, grid * grid)  # (B, grid*grid)
    return _normalise_last(row).reshape(-1, grid, grid)


def gradient_rollout(attns: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensor:
    """Gradient-weighted rollout (Chefer et al., 2021, "Generic Attention-model
    Explainability"), (B, N, N) from per-layer `(B, heads, N, N)` weights and the gradients
    of the target score with respect to them.

    Per layer, Abar = mean over heads of relu(grad * attn): only the attention that raises
    the score counts. Starting from R = I, R = R + Abar @ R, first layer to last; the
    identity stands for the skip path, which carries each token's own relevance forward.
    """
    if not attns or len(attns) != len(grads):
        raise ValueError(f"gradient_rollout needs as many gradients ({len(grads)}) as layers "
                         f"({len(attns)}), at least one")
    b, _, n, _ = attns[0].shape
    rel = torch.eye(n, dtype=attns[0].dtype, device=attns[0].device).expand(b, n, n)
    for attn, grad in zip(attns, grads):
        rel = rel + (grad * attn).clamp_min(0).mean(dim=1) @ rel  # (B, N, N)
    return rel


def gradient_rollout_map(attns: Sequence[Tensor], grads: Sequence[Tensor], grid: int, *,
                         pool: str = "cls", registers: int = 0) -> Tensor:
    """The readout row of the gradient-weighted rollout over the patches, as rollout_map
    makes it: (B, grid, grid), summing to 1, all zeros where no attention raised the score.
    For CLS the identity adds nothing; for the patch mean it adds 1/(grid*grid) to every
    patch: each patch token reaches the head through its own skip path too."""
    _check_tokens(attns[0], grid, registers)
    row = readout_row(gradient_rollout(attns, grads), pool, grid * grid)  # (B, grid*grid)
    return _normalise_last(row).reshape(-1, grid, grid)


def head_maps(attn: Tensor, grid: int, *, pool: str = "cls", registers: int = 0) -> Tensor:
    """One layer's readout attention over the patches, per head: (B, heads, grid, grid).

    Not renormalised: the mass the readout puts on the CLS and register keys is simply missing
    from the map.
    """
    _check_tokens(attn, grid, registers)
    b, heads = attn.shape[:2]
    return readout_row(attn, pool, grid * grid).reshape(b, heads, grid, grid)


def upsample_map(m: Tensor, size: int) -> Tensor:
    """Blow a (..., g, g) patch map up to (..., size, size) image pixels, nearest-neighbour.

    Patch p covers exactly pixels [p * ps, (p + 1) * ps) with ps = size // g, the pixels
    the patch embedding read, so an overlay lines up with the image. Each value is
    repeated rather than interpolated: bilinear would smear a patch's value into its
    neighbours and blur exactly the boundaries the map is meant to show.
    """
    g = m.shape[-1]
    if m.shape[-2] != g or size % g:
        raise ValueError(f"map of shape {tuple(m.shape)} cannot tile a {size}x{size} image")
    ps = size // g
    return m.repeat_interleave(ps, dim=-2).repeat_interleave(ps, dim=-1)


def patch_distances(grid: int, patch_size: int) -> Tensor:
    """Euclidean distance in pixels between patch centres, (grid*grid, grid*grid), row-major."""
    idx = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(idx, idx, indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=-1) * patch_size  # (P, 2)
    # Centres are (i + 0.5) * ps; the 0.5 cancels in differences, so it is left out.
    return torch.cdist(centres, centres)


def mean_attention_distance(attns: Sequence[Tensor], grid: int, patch_size: int, *,
                            registers: int = 0) -> Tensor:
    """Mean attention distance in pixels per layer and head, (L, heads), as in ViT Fig. 7.

    For each patch query: sum over patch keys of attention * distance, then averaged over
    queries and the batch. CLS and registers have no position, so their query rows and key
    columns are dropped and each query's remaining weights renormalised to sum 1 over the patches.
    Averaging over several batches is the caller's job: weight each call by batch size.
    """
    if not attns:
        raise ValueError("mean_attention_distance needs at least one layer")
    dist = patch_distances(grid, patch_size)  # (P, P)
    per_layer = []
    for attn in attns:
        _check_tokens(attn, grid, registers)
        p = 1 + grid * grid
        patches = _normalise_last(attn[:, :, 1:p, 1:p].to(torch.float64))  # (B, heads, P, P)
        per_query = (patches * dist.to(patches.device)).sum(dim=-1)  # (B, heads, P)
        per_layer.append(per_query.mean(dim=(0, 2)))  # (heads,)
    return torch.stack(per_layer).to(attns[0].dtype)
