"""DVC stage `evaluate`: models/model.pt + test set -> reports/metrics.json, the confusion
matrix (DVC plot data and PNG), the top confusions and per-class accuracy (reads evaluate.*,
tracking.enabled)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vitlens.errors import run_main
from vitlens.pipeline.evaluate import run_evaluation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--data", type=Path, default=Path("data/dataset.npz"))
    ap.add_argument("--out-dir", type=Path, default=Path("reports/eval"))
    ap.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"))
    args = ap.parse_args()
    run_evaluation(args.params, args.model, args.data, args.out_dir, args.metrics)


if __name__ == "__main__":
    run_main(main)
