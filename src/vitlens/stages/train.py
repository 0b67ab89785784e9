"""DVC stage `train`: data/cifar10.npz -> models/model.pt + per-epoch history
(reads data.val_size, data.val_seed, data.train_subset, model.*, train.*, tracking.*)."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch

from vitlens import distributed, tracking
from vitlens.cifar import Cifar10, load_arrays
from vitlens.config import Params, load_params
from vitlens.device import pick_device
from vitlens.distributed import Dist
from vitlens.errors import run_main
from vitlens.io import atomic_path, write_csv
from vitlens.model import load_model, model_record
from vitlens.serving import pixel_classifier, to_pixels
from vitlens.training import checkpoint_digest, load_checkpoint, train


def start_run(params: Params, previous_run_id: str, device: str,
              commit: str) -> tracking.Run | None:
    if not params.tracking.enabled:
        return None
    if previous_run_id:
        run = tracking.open_run(previous_run_id)
        run.reopen()
        return run
    tags = {"git_commit": commit, "device": device,
            "torch_version": torch.__version__, **tracking.dvc_tags()}
    run = tracking.create_run(params.tracking.experiment, os.environ.get("DVC_EXP_NAME"), tags)
    run.log_params(params.flat())
    return run


def run_training(params: Params, data_path: Path, out: Path, history_path: Path,
                 checkpoint: Path) -> None:
    """Train and write the outputs; under torchrun every rank trains, rank 0 alone writes."""
    data = load_arrays(data_path)
    state = load_checkpoint(checkpoint, checkpoint_digest(params))
    device = pick_device(params.train.device)
    dist, wrap = distributed.setup(device.type)
    try:
        if dist.main:
            commit = tracking.git_commit()
            run = start_run(params, state["run_id"] if state else "", str(device), commit)
            if run is not None and state is not None:
                run.log_missing_epochs(state["history"])
            with tracking.finishing(run):
                _train_and_write(params, data, state, dist, wrap, run, out, history_path,
                                 checkpoint, commit)
        else:
            train(params, data, checkpoint=checkpoint, state=state, dist=dist, wrap=wrap)
    finally:
        distributed.teardown()


def _train_and_write(params: Params, data: Cifar10, state: dict | None, dist: Dist,
                     wrap: Callable, run: tracking.Run | None, out: Path, history_path: Path,
                     checkpoint: Path, commit: str) -> None:
    result = train(params, data, checkpoint=checkpoint, state=state, dist=dist, run=run,
                   wrap=wrap)
    record = model_record(result.model, params, data.classes, mean=result.norm.mean,
                          std=result.norm.std, history=result.history, git_commit=commit,
                          run_id=run.id if run else None)
    with atomic_path(out) as tmp:
        torch.save(record, tmp)
    write_csv(history_path, result.history)
    model_uri = None
    if run is not None:
        run.log_artifact(history_path, "history")
        if params.tracking.log_model:
            # Exported from the file just written, on the CPU: the served model is model.pt.
            # Two real test images: a batch of one would fix the exported batch size at 1.
            model_uri = run.log_model(pixel_classifier(*load_model(out)),
                                      to_pixels(data.x_test[:2]), classes=data.classes,
                                      registered_model=params.tracking.registered_model)
    checkpoint.unlink(missing_ok=True)
    print(f"wrote {out} and {history_path}" + (f"; MLflow run {run.id}" if run else "")
          + (f", model {model_uri}" if model_uri else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, default=Path("data/cifar10.npz"))
    ap.add_argument("--out", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--history", type=Path, default=Path("reports/train/history.csv"))
    ap.add_argument("--checkpoint", type=Path, default=Path("models/checkpoint.pt"))
    args = ap.parse_args()
    params = load_params(args.params)
    if params.train.nproc > 1 and not distributed.launched():
        distributed.relaunch(params.train.nproc, "vitlens.stages.train")
    run_training(params, args.data, args.out, args.history, args.checkpoint)


if __name__ == "__main__":
    run_main(main)
