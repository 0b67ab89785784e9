"""DVC stage `visualize`: models/model.pt + test set -> reports/figures/ (training curves,
input grid, attention overlays, rollout vs heads, mean attention distance)
(reads visualize.*, tracking.enabled)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vitlens.errors import run_main
from vitlens.pipeline.visualize import run_visualize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--data", type=Path, default=Path("data/dataset.npz"))
    ap.add_argument("--out-dir", type=Path, default=Path("reports/figures"))
    args = ap.parse_args()
    run_visualize(args.params, args.model, args.data, args.out_dir)


if __name__ == "__main__":
    run_main(main)
