"""A run's decisions, made once before anything trains and handed down: the device, the
precision it resolves to there, and the seeded train/validation split (uint8, on the host)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vitlens.config import Params
from vitlens.data.imageset import ImageSet
from vitlens.data.split import split_train_val
from vitlens.device import pick_device, use_bf16
from vitlens.errors import VitlensError


@dataclass(frozen=True)
class Plan:
    device: torch.device
    bf16: bool  # train.precision as it resolved on `device`
    train: tuple[np.ndarray, np.ndarray]  # uint8 (N, C, S, S), int64 (N,)
    val: tuple[np.ndarray, np.ndarray]
    classes: list[str]


def plan_run(params: Params, data: ImageSet, device: torch.device | None = None) -> Plan:
    """The plan of `params` on `data`: train.device resolved unless `device` is given."""
    d, t = params.data, params.train
    dev = device or pick_device(t.device)
    train, val = split_train_val(data, val_size=d.val_size, seed=d.val_seed, subset=d.train_subset)
    if len(train[1]) < t.batch_size:
        raise VitlensError(f"train.batch_size={t.batch_size} must be <= the {len(train[1])} "
                           "training images left after the validation split and subset")
    return Plan(dev, use_bf16(t.precision, dev), train, val, list(data.classes))
