"""Checkpoints of the train stage: written atomically after every epoch, resumed only under
params that would have trained the same weights."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vitlens.config import Params
from vitlens.io import save_torch
from vitlens.train.optim import Optimizer

SECTIONS = ("data", "model", "train")
# Keys that change where the data comes from or how fast a step runs, never the weights:
# pointing data.url at a local copy of the same archive (same data.md5) keeps a checkpoint.
NOT_WEIGHTS = ("data.url", "data.retries", "data.timeout_s",
               "train.threads", "train.compile", "train.compile_mode")


def checkpoint_digest(params: Params) -> str:
    """A hash of every param that changes the trained weights, and of nothing else."""
    return params.digest(*SECTIONS, exclude=NOT_WEIGHTS)


def checkpoint_state(model: nn.Module, opt: Optimizer, epoch: int, step: int,
                     history: list, digest: str, run_id: str | None, extra: dict | None = None) -> dict:
    # No RNG state: every epoch reseeds its generators (step.seed_epoch), on every rank.
    return {"digest": digest, "epoch": epoch, "step": step, "history": history,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "run_id": run_id or "",
            **(extra or {})}


def save_checkpoint(state: dict, path: Path) -> None:
    save_torch(state, path)


def load_checkpoint(path: Path, digest: str) -> dict | None:
    """The checkpoint at `path` if it was written under the same weight-changing params, else
    None (with one line saying why it is not resumed)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt checkpoint is ignored, not fatal
        print(f"ignoring unreadable checkpoint {path}: {str(e).splitlines()[0]}")
        return None
    if state.get("digest") != digest:
        print(f"ignoring checkpoint {path}: it was written under other params (ones that change the weights)")
        return None
    return state
