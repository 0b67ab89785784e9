"""CIFAR-10 on the training device: one uint8 tensor, batch-level crop/flip, then normalise.

No per-image Python or PIL work: augmentation is a handful of tensor ops per batch, so the
data pipeline is never what the GPU waits for.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vitlens.cifar import Cifar10
from vitlens.errors import VitlensError


@dataclass
class Split:
    x: Tensor  # (N, 3, 32, 32) uint8, on the device
    y: Tensor  # (N,) int64, on the device

    def __len__(self) -> int:
        return len(self.y)


def split_train_val(data: Cifar10, *, val_size: int, seed: int,
                    subset: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Hold out `val_size` training images (seeded); optionally keep only `subset` of the rest."""
    n = len(data.y_train)
    if val_size >= n:
        raise VitlensError(f"data.val_size={val_size} must be < the {n} training images")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    if subset:
        train_idx = train_idx[:subset]
    return ((data.x_train[train_idx], data.y_train[train_idx]),
            (data.x_train[val_idx], data.y_train[val_idx]))


def to_device(x: np.ndarray, y: np.ndarray, device: torch.device) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x)).to(device),
                 torch.from_numpy(np.ascontiguousarray(y)).to(device))


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    xf = x.reshape(len(x), 3, -1).transpose(1, 0, 2).reshape(3, -1).astype(np.float64) / 255
    return xf.mean(axis=1).tolist(), xf.std(axis=1).tolist()


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W); mean/std are (1, 3, 1, 1) in [0, 1] units."""
    return (x.float() / 255 - mean) / std


def random_crop_flip(x: Tensor, *, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random `padding`-pixel-shift crop (zero padded) and horizontal flip of a whole uint8
    batch: two gathers, rows then columns; a flip just mirrors the column index."""
    B, C, H, W = x.shape
    g, dev, p = generator, x.device, padding
    dy = torch.randint(0, 2 * p + 1, (B, 1), generator=g, device=dev)
    dx = torch.randint(0, 2 * p + 1, (B, 1), generator=g, device=dev)
    cols = torch.arange(W, device=dev).expand(B, W)
    if flip:
        mirror = torch.rand(B, 1, generator=g, device=dev) < 0.5
        cols = torch.where(mirror, W - 1 - cols, cols)
    padded = F.pad(x, (p,) * 4) if p else x  # (B, C, H + 2p, W + 2p)
    rows = (dy + torch.arange(H, device=dev)).view(B, 1, H, 1).expand(B, C, H, W + 2 * p)
    x = padded.gather(2, rows)  # (B, C, H, W + 2p)
    return x.gather(3, (dx + cols).view(B, 1, 1, W).expand(B, C, H, W))  # (B, C, H, W)


def batches(split: Split, batch_size: int, *, generator: torch.Generator | None = None,
            drop_last: bool = False, rank: int = 0, world: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """(x uint8, y) batches of `batch_size` images in all, of which this rank yields its
    1/world share; shuffled by `generator` (the same on every rank) when given."""
    n = len(split)
    if generator is not None:
        order = torch.randperm(n, generator=generator, device=generator.device)
    else:
        order = torch.arange(n, device=split.y.device)
    end = n - n % batch_size if drop_last else n
    for i in range(0, end, batch_size):
        idx = order[i:i + batch_size][rank::world]
        yield split.x[idx], split.y[idx]
