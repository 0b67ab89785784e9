"""DVC stage `publish`: models/model.pt -> the training run's attention strips and served
model in MLflow, registered; reports/published.json names them (reads tracking.*)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vitlens.errors import run_main
from vitlens.pipeline.publish import run_publish


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--data", type=Path, default=Path("data/dataset.npz"))
    ap.add_argument("--out", type=Path, default=Path("reports/published.json"))
    args = ap.parse_args()
    run_publish(args.params, args.model, args.data, args.out)


if __name__ == "__main__":
    run_main(main)
