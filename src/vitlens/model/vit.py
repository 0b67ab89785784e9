"""A Vision Transformer, written here: patch embedding (or a small convolutional stem), CLS
token, learned (or fixed 2-D sin-cos) positions, optional register tokens, pre-norm encoder
blocks, final norm and a linear head on the CLS token (or on the mean of the patch tokens).

Tokens, in order: CLS, the grid*grid patches (row-major), then the registers (Darcet et al.
2023, "Vision Transformers Need Registers"): learned tokens with no position and no pixels,
somewhere for attention to go that is not a patch. Every map reads the patch tokens alone.

The model owns what belongs to it: its optimizer groups and its FLOP count.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from vitlens.config import ModelConfig
from vitlens.model.layers import Block, conv_stem, keep_tokens, kept_patches, sincos_2d, stem_widths


class ViT(nn.Module):
    def __init__(self, *, image_size: int, patch_size: int, num_classes: int, dim: int,
                 depth: int, heads: int, mlp_ratio: float, dropout: float = 0.0,
                 attn_dropout: float = 0.0, drop_path: float = 0.0, channels: int = 3,
                 pos_embed: str = "learned", stem: str = "patch", token_drop: float = 0.0,
                 pool: str = "cls", lsa: bool = False, registers: int = 0):
        super().__init__()
        assert registers >= 0, f"registers must be >= 0, got {registers}"
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
        self.n_registers = registers
        self.registers = nn.Parameter(torch.zeros(1, registers, dim)) if registers else None  # (1, R, dim)
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
        if self.registers is not None:
            nn.init.trunc_normal_(self.registers, std=0.02)
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
        if self.registers is not None:
            x = torch.cat([x, self.registers.expand(x.shape[0], -1, -1)], dim=1)  # (B, 1 + P + R, dim)
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
        patches = x[:, 1:x.shape[1] - self.n_registers]  # (B, P, dim), no registers
        logits = self.head(self.norm(x[:, 0] if self.pool == "cls" else patches.mean(dim=1)))
        return (logits, attns) if return_attn else logits


def build_model(cfg: ModelConfig, num_classes: int) -> ViT:
    return ViT(image_size=cfg.image_size, patch_size=cfg.patch_size, num_classes=num_classes,
               dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
               dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, drop_path=cfg.drop_path,
               pos_embed=cfg.pos_embed, stem=cfg.stem, token_drop=cfg.token_drop, pool=cfg.pool,
               lsa=cfg.lsa, registers=cfg.registers)


def train_flops_per_image(cfg: ModelConfig, num_classes: int = 10) -> float:
    """FLOPs of one training step per image: 2 per multiply-add, backward twice the forward.
    Counts the matrix products (embedding, QKV, attention, projection, MLP, head), with
    the last block on the CLS query alone (model.pool=cls) and the patch tokens
    model.token_drop keeps, as ViT.forward runs it in training."""
    n = kept_patches((cfg.image_size // cfg.patch_size) ** 2, cfg.token_drop) + 1 + cfg.registers
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


def param_groups(model: nn.Module, weight_decay: float, *, muon: bool = False) -> list[dict]:
    """Weight decay on weight matrices/kernels only: not biases, norms, CLS, registers or
    positions. With `muon`, the blocks' weight matrices (attention and MLP) form a third
    group flagged "muon": Muon suits hidden 2-D matrices, not the embedding or the head."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    hidden: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.rsplit(".", 1)[-1] in ("cls_token", "pos_embed", "registers")
        if muon and p.ndim == 2 and name.startswith("blocks."):
            hidden.append(p)
        else:
            (decay if p.ndim >= 2 and not is_embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return groups + ([{"params": hidden, "weight_decay": weight_decay, "muon": True}] if muon else [])

