"""The ViT's parts: attention (a fused SDPA path and an explicit one that keeps the weights),
stochastic depth, the pre-norm block, positions, token drop and the patch or conv stem.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention with a fused path (SDPA) and an explicit path that
    returns the weights; SDPA never exposes them, and hooks do not fire inside it.

    With `lsa`, locality self-attention (Lee et al. 2021, for small datasets): no token
    attends to itself, and the scale of the scores is learned (log-parametrised, from
    head_dim^-0.5), so each layer sets how sharp its attention is."""

    def __init__(self, *, dim: int, heads: int, attn_dropout: float, dropout: float,
                 lsa: bool = False):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} must be divisible by heads {heads}"
        self.heads, self.head_dim = heads, dim // heads
        self.log_scale = nn.Parameter(torch.tensor(self.head_dim**-0.5).log()) if lsa else None
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, return_attn: bool = False,
                cls_only: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, N, C) -> (B, N, C); with cls_only, (B, 1, C): the CLS query's output alone."""
        B, N, C = x.shape
        if cls_only:  # K and V of every token, Q of the CLS token only
            w, b = self.qkv.weight, self.qkv.bias
            q = self._heads(F.linear(x[:, :1], w[:C], b[:C]), 1)[0]  # (B, heads, 1, head_dim)
            k, v = self._heads(F.linear(x, w[C:], b[C:]), 2)
        else:
            q, k, v = self._heads(self.qkv(x), 3)  # each (B, heads, N, head_dim)
        p = self.attn_dropout if self.training else 0.0
        lsa = self.log_scale is not None  # then query i is token i (CLS alone: token 0)
        scale = self.head_dim**-0.5 if self.log_scale is None else self.log_scale.exp()
        # On a CPU in bf16 the explicit products run on AMX while SDPA's flash kernel does not:
        # the preset's step took 158 ms explicit against 347 ms with SDPA (Intel Xeon, AMX).
        if return_attn or (q.device.type == "cpu" and q.dtype == torch.bfloat16):
            scores = q @ k.transpose(-2, -1) * scale  # (B, heads, Nq, N)
            if lsa:  # in place: no second (B, heads, Nq, N) tensor
                scores.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
            attn = scores.softmax(dim=-1)
            out = F.dropout(attn, p, self.training) @ v
        else:
            attn, mask = None, None
            if lsa:  # SDPA takes a float scale, not a tensor: scale q instead
                mask = ~torch.eye(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device)
                q = q * scale
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 scale=1.0 if lsa else None)
        out = out.transpose(1, 2).reshape(B, q.shape[2], C)
        return self.drop(self.proj(out)), attn

    def _heads(self, t: Tensor, parts: int) -> Tensor:
        """(B, N, parts * C) -> (parts, B, heads, N, head_dim)."""
        B, N, _ = t.shape
        return t.view(B, N, parts, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample, rescale the survivors."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        # Scale the (B, 1, 1) mask, not the activations: one pass over x instead of two.
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep.div_(1 - self.p)


class Block(nn.Module):
    def __init__(self, *, dim: int, heads: int, mlp_ratio: float, dropout: float,
                 attn_dropout: float, drop_path: float, lsa: bool = False):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, heads=heads, attn_dropout=attn_dropout, dropout=dropout,
                              lsa=lsa)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, return_attn: bool = False,
                cls_only: bool = False) -> tuple[Tensor, Tensor | None]:
        a, attn = self.attn(self.norm1(x), return_attn, cls_only)
        if cls_only:
            x = x[:, :1]
        x = x + self.drop_path(a)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn


def sincos_2d(grid: int, dim: int) -> Tensor:
    """Fixed positions (1, 1 + grid*grid, dim), as in MAE: a quarter of the channels are
    sin and cos of the row at geometric frequencies, a quarter of the column, and so on;
    the CLS token's row is zero (it has no place in the image)."""
    assert dim % 4 == 0, f"dim {dim} must be divisible by 4 for sin-cos positions"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = [c.flatten()[:, None].double() * omega for c in (rows, cols)]  # (grid*grid, dim/4)
    pe = torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)
    return torch.cat([pe.new_zeros(1, dim), pe]).float()[None]


def kept_patches(patches: int, token_drop: float) -> int:
    """Patch tokens a training step keeps of `patches` under model.token_drop (at least one)."""
    return max(1, round(patches * (1 - token_drop)))


def keep_tokens(x: Tensor, keep: int) -> Tensor:
    """(B, 1 + keep, dim): the CLS token and a random `keep` of each image's patch tokens,
    positions already added, so every block runs a shorter sequence (token dropout)."""
    b, n, d = x.shape
    idx = torch.rand(b, n - 1, device=x.device).argsort(1)[:, :keep] + 1  # (B, keep), 1-based
    idx = torch.cat([idx.new_zeros(b, 1), idx], 1)
    return x.gather(1, idx[..., None].expand(-1, -1, d))


def stem_widths(channels: int, dim: int, patch_size: int) -> list[int]:
    """Channels into and out of each stride-2 conv of the conv stem: log2(patch_size) of
    them, widths doubling up to dim/2 (e.g. 3, 32, 64 for dim 128 and patch 4)."""
    assert patch_size >= 2 and patch_size & (patch_size - 1) == 0, \
        f"model.stem=conv needs a power-of-2 patch size, got {patch_size}"
    n = patch_size.bit_length() - 1
    return [channels] + [max(dim >> (n - i), 1) for i in range(n)]


def conv_stem(channels: int, dim: int, patch_size: int) -> nn.Sequential:
    """One token per patch, as the patch embedding gives, from convs of stride 2 (each then
    GELU) and a 1x1 conv to dim (after Xiao et al. 2021, "Early convolutions help
    transformers see better"). Kernels of 4 with padding 1, not 3: each token's view is then
    centred on its patch, which it overhangs by 3 pixels on every side for patch 4 (by
    patch_size - 1 in general). No BatchNorm: its running statistics would not follow
    train.ema's averaged weights, and the encoder's pre-norm normalises the tokens anyway."""
    widths = stem_widths(channels, dim, patch_size)
    layers: list[nn.Module] = []
    for c_in, c_out in zip(widths, widths[1:]):
        layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.GELU()]
    return nn.Sequential(*layers, nn.Conv2d(widths[-1], dim, kernel_size=1))

