"""Per-channel normalisation of uint8 images, on whole batches on the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

STATS_CHUNK = 1 << 22  # values per float64 chunk (32 MB): bounded memory for any number of images


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units: two passes
    over chunks (the mean, then the squared deviations), never a float copy of all of x."""
    step = max(1, STATS_CHUNK // x[:1].size)  # images per chunk
    chunks = range(0, len(x), step)
    count = x[:1].size // x.shape[1] * len(x)  # values per channel
    total = sum(x[i:i + step].sum(axis=(0, 2, 3), dtype=np.float64) for i in chunks)
    mean = np.asarray(total) / count / 255
    sq = sum((((x[i:i + step] / 255) - mean[:, None, None]) ** 2).sum(axis=(0, 2, 3)) for i in chunks)
    return mean.tolist(), np.sqrt(np.asarray(sq) / count).tolist()


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

