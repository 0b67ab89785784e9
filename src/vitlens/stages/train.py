"""DVC stage `train`: data/dataset.npz -> models/model.pt + per-epoch history
(reads data.val_size, data.val_seed, data.train_subset, model.*, train.*, tracking.enabled;
tracking.experiment names where a new run is filed, not what trains, so it is no dependency:
a new name takes effect at the next training)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vitlens.config import load_params
from vitlens.errors import run_main
from vitlens.pipeline.train import run_training
from vitlens.train import distributed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, default=Path("data/dataset.npz"))
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
