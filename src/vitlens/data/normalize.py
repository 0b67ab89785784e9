"""Per-channel normalisation of uint8 images, on whole batches on the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


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

