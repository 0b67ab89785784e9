"""Attention through training: after every epoch, the rollout and last-layer CLS maps of a
fixed set of validation images, kept as arrays in the checkpoint (a resumed run keeps them)
and in the model file: the explorer's epoch slider reads them, and the publish stage draws
them into MLflow's image slider. Nothing here draws: drawing edits never re-run training.
One explicit pass over a few images per epoch: no host sync on the training step's hot path."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from vitlens.data.normalize import Normalizer
from vitlens.explain.maps import compute_maps
from vitlens.model.vit import ViT


class AttentionSnapshots:
    """The training loop's epoch hook (vitlens.train.loop.EpochHook)."""

    def __init__(self, images: np.ndarray, truth: list[int]):
        self.images, self.truth = images, truth  # images: uint8 (n, 3, S, S)
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
