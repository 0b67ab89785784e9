"""The splits on the training device: the seeded train/validation split, one uint8 tensor per
split, and the batches drawn from it.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vitlens.data.imageset import ImageSet
from vitlens.errors import VitlensError


@dataclass
class Split:
    x: Tensor  # (N, 3, 32, 32) uint8, on the device
    y: Tensor  # (N,) int64, on the device

    def __len__(self) -> int:
        return len(self.y)


def split_train_val(data: ImageSet, *, val_size: int, seed: int,
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


def batch_indices(n: int, batch_size: int, generator: torch.Generator, *, repeats: int = 1,
                  rank: int = 0, world: int = 1) -> Iterator[Tensor]:
    """A `generator`-shuffled epoch of n images in full batches of `batch_size` (the last
    partial one is dropped); each rank yields its 1/world share of every batch, so the
    generator must be seeded alike on every rank. With `repeats` > 1 (DeiT's repeated
    augmentation), n / repeats images fill the epoch, each `repeats` times side by side: one
    batch augments its copies apart (under DDP, on different ranks, as DeiT's sampler does)."""
    assert repeats >= 1, f"repeats must be >= 1, got {repeats}"
    order = torch.randperm(n, generator=generator, device=generator.device)
    if repeats > 1:
        order = order[:-(-n // repeats)].repeat_interleave(repeats)[:n]
    for i in range(0, n - n % batch_size, batch_size):
        yield order[i:i + batch_size][rank::world]


def batches(split: Split, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(x uint8, y) batches of `split`, in order."""
    for i in range(0, len(split), batch_size):
        yield split.x[i:i + batch_size], split.y[i:i + batch_size]

