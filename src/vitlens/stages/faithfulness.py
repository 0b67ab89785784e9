"""DVC stage `faithfulness`: models/model.pt + test set -> reports/faithfulness.json (deletion
and insertion AUC per explanation method, with bootstrap intervals), the mean curves (DVC plot
data and PNG) and the methods side by side (reads faithfulness.*, tracking.enabled)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vitlens.errors import run_main
from vitlens.pipeline.faithfulness import run_faithfulness


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--data", type=Path, default=Path("data/dataset.npz"))
    ap.add_argument("--out-dir", type=Path, default=Path("reports/faithfulness"))
    ap.add_argument("--metrics", type=Path, default=Path("reports/faithfulness.json"))
    args = ap.parse_args()
    run_faithfulness(args.params, args.model, args.data, args.out_dir, args.metrics)


if __name__ == "__main__":
    run_main(main)
