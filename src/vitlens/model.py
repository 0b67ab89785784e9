"""A Vision Transformer, written here: patch embedding (or a small convolutional stem), CLS
token, learned (or fixed 2-D sin-cos) positions, pre-norm encoder blocks, final norm and a
linear head on the CLS token (or on the mean of the patch tokens)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlens.config import ModelConfig, Params

MODEL_FORMAT = "vitlens-vit/1"


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


class ViT(nn.Module):
    def __init__(self, *, image_size: int, patch_size: int, num_classes: int, dim: int,
                 depth: int, heads: int, mlp_ratio: float, dropout: float = 0.0,
                 attn_dropout: float = 0.0, drop_path: float = 0.0, channels: int = 3,
                 pos_embed: str = "learned", stem: str = "patch", token_drop: float = 0.0,
                 pool: str = "cls", lsa: bool = False):
        super().__init__()
        assert pool in ("cls", "mean"), f"unknown pool {pool!r}"
        self.pool = pool
        assert image_size % patch_size == 0, "image size must be divisible by patch size"
        self.grid = image_size // patch_size
        self.patch_size = patch_size
        self.drop_tokens(token_drop)
        assert stem in ("patch", "conv"), f"unknown stem {stem!r}"
        self.patch_embed = (conv_stem(channels, dim, patch_size) if stem == "conv" else
                            nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        assert pos_embed in ("learned", "sincos"), f"unknown pos_embed {pos_embed!r}"
        if pos_embed == "sincos":  # a buffer: saved with the weights, never trained
            self.register_buffer("pos_embed", sincos_2d(self.grid, dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.drop = nn.Dropout(dropout)
        # Stochastic depth grows linearly with depth: early blocks are kept almost always.
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(dim=dim, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout,
                  attn_dropout=attn_dropout, drop_path=r, lsa=lsa) for r in rates)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def drop_tokens(self, token_drop: float) -> None:
        """Keep 1 - `token_drop` of the patch tokens in training steps from now on."""
        assert 0 <= token_drop < 1, f"token_drop must be in [0, 1), got {token_drop}"
        self.keep = kept_patches(self.grid**2, token_drop)

    @property
    def readout(self) -> str:
        """What the head reads, as figures name it: "CLS" or "patch-mean" (model.pool)."""
        return "CLS" if self.pool == "cls" else "patch-mean"

    def _init_weights(self) -> None:
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, return_attn: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits (B, classes); with return_attn, also every layer's (B, heads, N, N) weights."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, grid*grid, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed  # (B, N, dim), N = 1 + grid*grid
        if self.training and self.keep < self.grid**2 and not return_attn:
            x = keep_tokens(x, self.keep)  # (B, 1 + keep, dim); evaluation and maps read all
        x = self.drop(x)
        attns = []
        for i, block in enumerate(self.blocks):
            # A head on the CLS token reads it alone, so unless every layer's full attention
            # is asked for, the last block updates only that token (~1/depth fewer FLOPs).
            last = i == len(self.blocks) - 1 and not return_attn and self.pool == "cls"
            x, attn = block(x, return_attn, cls_only=last)
            attns.append(attn)
        # Mean pooling: the CLS token stays in the sequence (a token every patch may read),
        # but the head reads the mean of the patch tokens, (B, dim), normalised after pooling.
        logits = self.head(self.norm(x[:, 0] if self.pool == "cls" else x[:, 1:].mean(dim=1)))
        return (logits, attns) if return_attn else logits


def build_model(cfg: ModelConfig, num_classes: int) -> ViT:
    return ViT(image_size=cfg.image_size, patch_size=cfg.patch_size, num_classes=num_classes,
               dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
               dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, drop_path=cfg.drop_path,
               pos_embed=cfg.pos_embed, stem=cfg.stem, token_drop=cfg.token_drop, pool=cfg.pool,
               lsa=cfg.lsa)


def train_flops_per_image(cfg: ModelConfig, num_classes: int = 10) -> float:
    """FLOPs of one training step per image: 2 per multiply-add, backward twice the forward.
    Counts the matrix products (embedding, QKV, attention, projection, MLP, head), with
    the last block on the CLS query alone (model.pool=cls) and the patch tokens
    model.token_drop keeps, as ViT.forward runs it in training."""
    n = kept_patches((cfg.image_size // cfg.patch_size) ** 2, cfg.token_drop) + 1
    d, h = cfg.dim, int(cfg.dim * cfg.mlp_ratio)
    token = 4 * d * d + 2 * h * d + 2 * n * d  # QKV, projection, MLP, QK^T and AV per query
    # K and V of every token, the rest for CLS only; every query when the head reads the mean.
    last = 2 * n * d * d + token - 2 * d * d if cfg.pool == "cls" else n * token
    macs = (cfg.depth - 1) * n * token + last + d * num_classes
    first, rest = _embed_macs(cfg, 3)
    return 6.0 * (macs + rest) + 4.0 * first  # the first layer's backward: its weights' alone


def _embed_macs(cfg: ModelConfig, channels: int) -> tuple[int, int]:
    """Multiply-adds of the embedding's first layer and of its other layers, per image."""
    if cfg.stem == "patch":
        return (cfg.image_size // cfg.patch_size) ** 2 * channels * cfg.patch_size**2 * cfg.dim, 0
    widths = stem_widths(channels, cfg.dim, cfg.patch_size)
    side = [cfg.image_size >> (i + 1) for i in range(len(widths) - 1)]  # output side of each conv
    convs = [s * s * 16 * a * b for s, a, b in zip(side, widths, widths[1:])]
    return convs[0], sum(convs[1:]) + side[-1] ** 2 * widths[-1] * cfg.dim


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices/kernels only: not biases, norms, CLS or positions."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.rsplit(".", 1)[-1] in ("cls_token", "pos_embed")
        (decay if p.ndim >= 2 and not is_embedding else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def model_record(model: ViT, params: Params, classes: list[str], *, mean: list[float],
                 std: list[float], history: list[dict[str, float]], git_commit: str,
                 run_id: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to rebuild and use the model (the normalisation too), and `extra`
    (the attention snapshots); loads with weights_only=True."""
    return {"format": MODEL_FORMAT, "state_dict": model.state_dict(),
            "model_config": asdict(params.model), "num_classes": len(classes),
            "classes": classes, "mean": mean, "std": std,
            "params": params.to_dict(), "git_commit": git_commit, "mlflow_run_id": run_id or "",
            "history": history, **(extra or {})}
