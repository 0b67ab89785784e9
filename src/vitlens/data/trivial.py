"""TrivialAugment (Müller & Hutter 2021) for whole uint8 batches on the training device.

Each image draws one op and a magnitude in [0, 1], uniformly; signed ops a sign too. No
per-image Python: each op runs once on the images that drew it, the geometric ones in one
`grid_sample`. Ops and ranges are RandAugment's as torchvision has them (shear 0.3, translate
150/331 of the side, rotate 30 degrees, enhance factors 1 +- 0.9, posterize to 8..4 bits,
solarize above 255..0, autocontrast); equalize is left out (a histogram per image and channel).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
COLOUR = ("brightness", "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast")
OPS = ("identity", *GEOMETRIC, *COLOUR)
GREY = (0.299, 0.587, 0.114)  # PIL's luma weights, as torchvision's rgb_to_grayscale
SMOOTH = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13  # PIL's SMOOTH: what sharpness blends from


def affine_matrix(op: str, m: Tensor) -> Tensor:
    """(n, 2, 3) affine_grid matrices of one geometric op for signed magnitudes m (n,) in [-1, 1]
    (output pixel -> input pixel, in [-1, 1] coordinates)."""
    theta = torch.eye(2, 3, device=m.device).repeat(len(m), 1, 1)
    if op == "shear_x":
        theta[:, 0, 1] = 0.3 * m
    elif op == "shear_y":
        theta[:, 1, 0] = 0.3 * m
    elif op == "translate_x":
        theta[:, 0, 2] = 2 * 150 / 331 * m  # a shift of t sides is 2t in grid coordinates
    elif op == "translate_y":
        theta[:, 1, 2] = 2 * 150 / 331 * m
    else:
        a = m * math.radians(30)
        theta[:, 0, 0], theta[:, 0, 1] = a.cos(), -a.sin()
        theta[:, 1, 0], theta[:, 1, 1] = a.sin(), a.cos()
    return theta


def _grey(x: Tensor) -> Tensor:
    """(n, 3, H, W) float -> (n, 1, H, W) luma."""
    w = torch.tensor(GREY, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def colour_op(op: str, x: Tensor, m: Tensor) -> Tensor:
    """One colour op on float pixels x (n, C, H, W) in [0, 255], signed magnitudes m (n,)."""
    f = (1 + 0.9 * m).view(-1, 1, 1, 1)  # enhance factor: 0 = the degenerate image, 1 = x
    if op == "brightness":
        return x * f
    if op == "color":
        return torch.lerp(_grey(x).expand_as(x), x, f)
    if op == "contrast":
        return torch.lerp(_grey(x).mean(dim=(2, 3), keepdim=True).expand_as(x), x, f)
    if op == "sharpness":
        c = x.shape[1]
        blur = F.conv2d(x, SMOOTH.to(x.device).expand(c, 1, 3, 3), padding=1, groups=c)
        blur[..., [0, -1], :], blur[..., :, [0, -1]] = x[..., [0, -1], :], x[..., :, [0, -1]]
        return torch.lerp(blur, x, f)
    k = m.abs().view(-1, 1, 1, 1)
    if op == "posterize":
        step = torch.exp2(torch.round(4 * k))  # keep 8 - round(4k) bits
        return torch.div(x, step, rounding_mode="floor") * step
    if op == "solarize":
        return torch.where(x >= 255 * (1 - k), 255 - x, x)
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)  # autocontrast
    return torch.where(hi > lo, (x - lo) * 255 / (hi - lo).clamp_min(1), x)


def trivial_augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """uint8 (B, C, H, W) -> uint8 (B, C, H, W): one random op of OPS per image."""
    b, dev, g = len(x), x.device, generator
    op = torch.randint(len(OPS), (b,), generator=g, device=dev)
    sign = torch.where(torch.rand(b, generator=g, device=dev) < 0.5, -1.0, 1.0)
    m = torch.rand(b, generator=g, device=dev) * sign  # (B,) signed magnitude
    out = x.float()
    geo = torch.zeros(b, 2, 3, device=dev)
    for i, name in enumerate(OPS[1:], start=1):
        idx = (op == i).nonzero().flatten()
        if not len(idx):
            continue
        if name in GEOMETRIC:
            geo[idx] = affine_matrix(name, m[idx])
        else:
            out[idx] = colour_op(name, out[idx], m[idx])
    moved = torch.isin(op, torch.arange(1, 1 + len(GEOMETRIC), device=dev)).nonzero().flatten()
    if len(moved):
        grid = F.affine_grid(geo[moved], [len(moved), *x.shape[1:]], align_corners=False)
        out[moved] = F.grid_sample(out[moved], grid, mode="nearest", padding_mode="zeros",
                                   align_corners=False)
    return out.clamp_(0, 255).round_().to(torch.uint8)
