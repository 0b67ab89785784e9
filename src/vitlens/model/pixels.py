"""The model as MLflow serves it: uint8 pixels in, class probabilities out.

The train stage logs a PixelClassifier exported by `torch.export` (MLflow's pt2 format), so a
client sends plain pixels (N, H, W, 3), as an image file holds them, and needs neither the
training set's mean and std nor this package. `vitlens.cli.predict` runs the same module on a
model file, so both give the same probabilities.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from vitlens.data.normalize import Normalizer, normalize
from vitlens.model.vit import ViT


class PixelClassifier(nn.Module):
    """A ViT with its normalisation inside: uint8 (N, H, W, 3) -> probabilities (N, classes)."""

    scale: Tensor
    shift: Tensor

    def __init__(self, vit: ViT, norm: Normalizer):
        super().__init__()
        self.vit = vit
        scale, shift = norm.tensors(torch.device("cpu"))  # (1, 3, 1, 1) each
        # Buffers, not Normalizer's cache: they move with .to(device) and export as constants.
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", shift.clone())

    def forward(self, x: Tensor) -> Tensor:
        x = normalize(x.permute(0, 3, 1, 2), self.scale, self.shift)  # (N, 3, H, W) float32
        return torch.softmax(self.vit(x).float(), dim=1)


def to_pixels(x: np.ndarray) -> np.ndarray:
    """Channels last, as image files and the served model have them: (N, 3, H, W) -> (N, H, W, 3)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
