"""The train stage's work: the prepared data -> the model file and its per-epoch history, in
an MLflow run that a checkpointed, resumed run continues. It trains and nothing else: the
publish stage draws the snapshots and logs and registers the served model, so that drawing,
serving or registry edits never re-run a training."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vitlens.config import Params
from vitlens.data.imageset import ImageSet, load_arrays
from vitlens.explain.snapshots import AttentionSnapshots
from vitlens.io import save_torch, write_csv
from vitlens.model.record import model_record
from vitlens.model.vit import train_flops_per_image
from vitlens.tracking import runs
from vitlens.train import distributed
from vitlens.train.checkpoint import checkpoint_digest, load_checkpoint
from vitlens.train.distributed import Dist
from vitlens.train.loop import train, training_flops
from vitlens.train.plan import Plan, plan_run


def start_run(params: Params, previous_run_id: str, plan: Plan, commit: str,
              data: ImageSet) -> runs.Run | None:
    if not params.tracking.enabled:
        return None
    if previous_run_id:
        run = runs.open_run(previous_run_id)
        run.reopen()
        return run
    # train.precision as it resolved here (auto reads differently on another machine).
    tags = {"git_commit": commit, "device": str(plan.device), "precision": "bf16" if plan.bf16 else "fp32",
            "torch_version": torch.__version__, **runs.dvc_tags()}
    run = runs.create_run(params.tracking.experiment, os.environ.get("DVC_EXP_NAME"), tags)
    run.log_params(params.flat())
    run.log_dataset(data.about())
    return run


CPU_WARN_RATIO = 3.0  # warn on a CPU when a step costs this many times the CPU preset's
# FLOPs per training image of the CPU preset's model (train/preset.MODEL); a constant, so that
# editing the preset never re-runs a training (tests/test_preset.py ties the two together).
CPU_PRESET_FLOPS_PER_IMAGE = 3.03e8


def warn_if_gpu_sized(params: Params, device: torch.device, train_images: int) -> None:
    """On a CPU, a run many times the CPU preset's size says so before it starts: the default
    is sized for a GPU, and a first `make repro` on a laptop would otherwise run for hours
    before the first estimate."""
    if device.type != "cpu":
        return
    ratio = train_flops_per_image(params.model) / CPU_PRESET_FLOPS_PER_IMAGE
    if ratio >= CPU_WARN_RATIO:
        print(f"note: training on a CPU a model sized for a GPU: {ratio:.0f}x the FLOPs of the CPU "
              f"preset ({training_flops(params, train_images) / 1e15:.2g} PFLOP); the estimate "
              "after the first steps follows. For a CPU: make repro-cpu (dvc exp run with the "
              "flags `vitlens cpu-preset` prints for this CPU)", flush=True)


def run_training(params: Params, data_path: Path, out: Path, history_path: Path,
                 checkpoint: Path) -> None:
    """Train and write the outputs; under torchrun every rank trains, rank 0 alone writes."""
    data = load_arrays(data_path)
    state = load_checkpoint(checkpoint, checkpoint_digest(params))
    plan = plan_run(params, data)
    warn_if_gpu_sized(params, plan.device, len(data.y_train))
    dist, wrap = distributed.setup(plan.device.type)
    try:
        if dist.main:
            commit = runs.git_commit()
            run = start_run(params, state["run_id"] if state else "", plan, commit, data)
            if run is not None and state is not None:
                run.log_missing_epochs(state["history"])
            with runs.finishing(run):
                train_and_write(params, data, plan, state, dist, wrap, run, out, history_path,
                                checkpoint, commit)
        else:
            train(params, data, checkpoint=checkpoint, state=state, dist=dist, wrap=wrap, plan=plan)
    finally:
        distributed.teardown()


def snapshots(params: Params, plan: Plan) -> AttentionSnapshots | None:
    """The epoch hook that keeps the maps of the first train.snapshot_images validation
    images (the validation split is seeded, so they are a fixed random choice); None for 0."""
    n = params.train.snapshot_images
    if not n:
        return None
    x_val, y_val = plan.val
    return AttentionSnapshots(np.ascontiguousarray(x_val[:n]), [int(y) for y in y_val[:n]])


def train_and_write(params: Params, data: ImageSet, plan: Plan, state: dict | None, dist: Dist,
                    wrap: Callable, run: runs.Run | None, out: Path, history_path: Path,
                    checkpoint: Path, commit: str) -> None:
    hook = snapshots(params, plan)
    result = train(params, data, checkpoint=checkpoint, state=state, dist=dist, run=run,
                   wrap=wrap, hook=hook, plan=plan)
    record = model_record(result.model, params, plan.classes, mean=result.norm.mean,
                          std=result.norm.std, history=result.history, git_commit=commit,
                          run_id=run.id if run else None, extra=hook.state() if hook else None)
    save_torch(record, out)
    write_csv(history_path, result.history)
    if run is not None:
        run.log_artifact(history_path, "history")
    checkpoint.unlink(missing_ok=True)
    print(f"wrote {out} and {history_path}" + (f"; MLflow run {run.id}" if run else ""))
