"""The train stage's work: the prepared data -> the model file and its per-epoch history, in
an MLflow run that a checkpointed, resumed run continues; the model logged and registered."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vitlens.config import Params
from vitlens.data.imageset import ImageSet, load_arrays
from vitlens.data.split import split_train_val
from vitlens.device import pick_device, use_bf16
from vitlens.explain.snapshots import AttentionSnapshots
from vitlens.io import save_torch, write_csv
from vitlens.model.pixels import to_pixels
from vitlens.model.record import model_record
from vitlens.model.trained import load_trained
from vitlens.tracking import runs
from vitlens.train import distributed, preset
from vitlens.train.checkpoint import checkpoint_digest, load_checkpoint
from vitlens.train.distributed import Dist
from vitlens.train.loop import train, training_flops


def start_run(params: Params, previous_run_id: str, device: torch.device,
              commit: str) -> runs.Run | None:
    if not params.tracking.enabled:
        return None
    if previous_run_id:
        run = runs.open_run(previous_run_id)
        run.reopen()
        return run
    # train.precision as it resolved here (auto reads differently on another machine).
    tags = {"git_commit": commit, "device": str(device),
            "precision": "bf16" if use_bf16(params.train.precision, device) else "fp32",
            "torch_version": torch.__version__, **runs.dvc_tags()}
    run = runs.create_run(params.tracking.experiment, os.environ.get("DVC_EXP_NAME"), tags)
    run.log_params(params.flat())
    return run


CPU_WARN_RATIO = 3.0  # warn on a CPU when a run costs this many times the CPU preset's FLOPs


def warn_if_gpu_sized(params: Params, device: torch.device, train_images: int) -> None:
    """On a CPU, a run many times the CPU preset's size says so before it starts: the default
    is sized for a GPU, and a first `make repro` on a laptop would otherwise run for hours
    before the first estimate."""
    if device.type != "cpu":
        return
    cpu = preset.apply(params, preset.MODEL)
    ratio = training_flops(params, train_images) / training_flops(cpu, train_images)
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
    device = pick_device(params.train.device)
    warn_if_gpu_sized(params, device, len(data.y_train))
    dist, wrap = distributed.setup(device.type)
    try:
        if dist.main:
            commit = runs.git_commit()
            run = start_run(params, state["run_id"] if state else "", device, commit)
            if run is not None and state is not None:
                run.log_missing_epochs(state["history"])
            with runs.finishing(run):
                train_and_write(params, data, state, dist, wrap, run, out, history_path,
                                 checkpoint, commit)
        else:
            train(params, data, checkpoint=checkpoint, state=state, dist=dist, wrap=wrap)
    finally:
        distributed.teardown()


def snapshots(params: Params, data: ImageSet, run: runs.Run | None) -> AttentionSnapshots | None:
    """The epoch hook that keeps the maps of the first train.snapshot_images validation
    images (the validation split is seeded, so they are a fixed random choice); None for 0."""
    n = params.train.snapshot_images
    if not n:
        return None
    d = params.data
    _, (x_val, y_val) = split_train_val(data, val_size=d.val_size, seed=d.val_seed, subset=d.train_subset)
    return AttentionSnapshots(np.ascontiguousarray(x_val[:n]), [int(y) for y in y_val[:n]], run=run)


def train_and_write(params: Params, data: ImageSet, state: dict | None, dist: Dist,
                     wrap: Callable, run: runs.Run | None, out: Path, history_path: Path,
                     checkpoint: Path, commit: str) -> None:
    hook = snapshots(params, data, run)
    result = train(params, data, checkpoint=checkpoint, state=state, dist=dist, run=run,
                   wrap=wrap, hook=hook)
    record = model_record(result.model, params, data.classes, mean=result.norm.mean,
                          std=result.norm.std, history=result.history, git_commit=commit,
                          run_id=run.id if run else None, extra=hook.state() if hook else None)
    save_torch(record, out)
    write_csv(history_path, result.history)
    model_uri = None
    if run is not None:
        run.log_artifact(history_path, "history")
        if params.tracking.log_model:
            # Exported from the file just written, on the CPU: the served model is model.pt.
            # Two real test images: a batch of one would fix the exported batch size at 1.
            model_uri = run.log_model(load_trained(out, "cpu").pixel_classifier(),
                                      to_pixels(data.x_test[:2]), classes=data.classes,
                                      registered_model=params.tracking.registered_model)
    checkpoint.unlink(missing_ok=True)
    print(f"wrote {out} and {history_path}" + (f"; MLflow run {run.id}" if run else "")
          + (f", model {model_uri}" if model_uri else ""))
