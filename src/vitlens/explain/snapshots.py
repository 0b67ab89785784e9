"""Attention through training: after every epoch, the rollout and last-layer CLS maps of a
fixed set of validation images, kept in the checkpoint (a resumed run keeps them), in the
model file (the explorer's epoch slider reads them) and in MLflow as a stepped image (the
MLflow UI's image slider). One explicit pass over a few images per epoch: no host sync on
the training step's hot path."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from vitlens.data.normalize import Normalizer
from vitlens.explain.attention import upsample_map
from vitlens.explain.maps import compute_maps
from vitlens.model.vit import ViT
from vitlens.plots.common import overlay_strip

IMAGE_KEY = "attention/rollout"  # the MLflow image key: one image per epoch, a step slider


class AttentionSnapshots:
    """The training loop's epoch hook (vitlens.train.loop.EpochHook)."""

    def __init__(self, images: np.ndarray, truth: list[int], *, run: Any = None):
        self.images, self.truth, self.run = images, truth, run  # images: uint8 (n, 3, S, S)
        self.epochs: list[int] = []
        self.rollout: list[Tensor] = []  # per epoch (n, g, g) float16
        self.heads: list[Tensor] = []  # per epoch (n, heads, g, g) float16

    def after_epoch(self, epoch: int, model: ViT, norm: Normalizer) -> None:
        was_training = model.training
        x = norm(torch.from_numpy(self.images).to(next(model.parameters()).device))
        maps = compute_maps(model, x, grad=False)
        model.train(was_training)
        self.epochs.append(epoch)
        self.rollout.append(maps.rollout.half().cpu())
        self.heads.append(maps.heads.half().cpu())
        if self.run is not None:
            up = upsample_map(maps.rollout.float().cpu(), self.images.shape[-1]).numpy()
            self.run.log_image(overlay_strip(self.images, up), key=IMAGE_KEY, step=epoch)

    def state(self) -> dict[str, Any]:
        """What the checkpoint and the model file keep, under "snapshots"."""
        return {"snapshots": {"epochs": list(self.epochs), "images": torch.from_numpy(self.images),
                              "truth": list(self.truth),
                              "rollout": torch.stack(self.rollout) if self.rollout else torch.empty(0),
                              "heads": torch.stack(self.heads) if self.heads else torch.empty(0)}}

    def restore(self, state: dict[str, Any]) -> None:
        snap = state.get("snapshots")
        if not snap or not snap["epochs"]:
            return
        self.epochs = list(snap["epochs"])
        self.rollout = list(snap["rollout"])
        self.heads = list(snap["heads"])
