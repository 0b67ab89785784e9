"""CIFAR-10 on the training device: one uint8 tensor, batch-level crop/flip, then normalise.

No per-image Python or PIL work: augmentation is one gather per batch, so the data pipeline
is never what the GPU waits for.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

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


def normalize(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> float32 x * scale + shift in one pass; scale = 1 / (255 std) and
    shift = -mean / std are (1, 3, 1, 1), mean and std in [0, 1] units."""
    return torch.addcmul(shift, x, scale)


@dataclass
class Normalizer:
    """uint8 images -> normalised floats with the training set's per-channel statistics."""
    mean: list[float]
    std: list[float]
    _on: dict = field(default_factory=dict, repr=False, compare=False)  # device -> tensors

    def __call__(self, x: Tensor) -> Tensor:
        return normalize(x, *self.tensors(x.device))

    def tensors(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(scale, shift), each (1, 3, 1, 1) on `device`: what `normalize` takes."""
        if device not in self._on:  # one host-to-device copy, not one per batch
            mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1)
                         for v in (self.mean, self.std))
            self._on[device] = (1 / (255 * std), -mean / std)
        return self._on[device]


class CropFlip:
    """Random crops of the zero-padded images (shifts of up to `padding` pixels) and random
    horizontal flips, for a whole batch in one strided gather.

    The images are stored once zero padded and, when flipping, once more mirrored (2x the
    memory; 0.4 GB for CIFAR-10's training set). A crop is then a window of a flattened
    padded image that starts at `dy * row + dx`, and a flip is the choice of copy: no
    per-pixel index maps, no second pass."""

    def __init__(self, x: Tensor, *, padding: int, flip: bool):
        n, c, h, w = x.shape
        self.n, self.shape, self.padding, self.flip = n, (c, h, w), padding, flip
        images = torch.cat([x, x.flip(-1)]) if flip else x
        padded = F.pad(images, (padding,) * 4).flatten(2)  # (copies * n, C, row * (H + 2p))
        self.row = w + 2 * padding
        self.span = (h - 1) * self.row + w  # a crop, from its first pixel to its last
        self.windows = padded.unfold(2, self.span, 1)  # (copies * n, C, offsets, span), a view

    def __call__(self, idx: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 (B, C, H, W): images `idx`, each shifted and (maybe) mirrored at random."""
        b, (c, h, w), g, dev = len(idx), self.shape, generator, idx.device
        dy = torch.randint(0, 2 * self.padding + 1, (b,), generator=g, device=dev)
        dx = torch.randint(0, 2 * self.padding + 1, (b,), generator=g, device=dev)
        if self.flip:
            idx = idx + self.n * (torch.rand(b, generator=g, device=dev) < 0.5)
        crops = self.windows[idx, :, dy * self.row + dx]  # (B, C, span)
        return crops.as_strided((b, c, h, w), (c * self.span, self.span, self.row, 1))


def cutout(x: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """x (B, C, H, W), normalised, with a `size` x `size` square of each image set to 0 (the
    training set's mean colour), placed at random wholly inside it (airbench's cutout)."""
    b, _, h, w = x.shape
    g, dev = generator, x.device
    top = torch.randint(0, h - size + 1, (b, 1, 1, 1), generator=g, device=dev)
    left = torch.randint(0, w - size + 1, (b, 1, 1, 1), generator=g, device=dev)
    rows = torch.arange(h, device=dev).view(1, 1, h, 1) - top  # (B, 1, H, 1)
    cols = torch.arange(w, device=dev).view(1, 1, 1, w) - left  # (B, 1, 1, W)
    return x.masked_fill((rows >= 0) & (rows < size) & (cols >= 0) & (cols < size), 0)


def batch_indices(n: int, batch_size: int, generator: torch.Generator, *, rank: int = 0,
                  world: int = 1) -> Iterator[Tensor]:
    """A `generator`-shuffled epoch of n images in full batches of `batch_size` (the last
    partial one is dropped); each rank yields its 1/world share of every batch, so the
    generator must be seeded alike on every rank."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    for i in range(0, n - n % batch_size, batch_size):
        yield order[i:i + batch_size][rank::world]


def batches(split: Split, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(x uint8, y) batches of `split`, in order."""
    for i in range(0, len(split), batch_size):
        yield split.x[i:i + batch_size], split.y[i:i + batch_size]
