"""DVC stage `report`: models/model.pt + test set + the evaluate, visualize and faithfulness
results -> reports/explorer/index.html, the offline attention explorer (reads report.*,
tracking.enabled)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vitlens.errors import run_main
from vitlens.pipeline.report import run_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--data", type=Path, default=Path("data/dataset.npz"))
    ap.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"))
    ap.add_argument("--faithfulness", type=Path, default=Path("reports/faithfulness.json"))
    ap.add_argument("--distance", type=Path, default=Path("reports/figures/attention_distance.json"))
    ap.add_argument("--out", type=Path, default=Path("reports/explorer/index.html"))
    args = ap.parse_args()
    run_report(args.params, args.model, args.data, args.out, metrics=args.metrics,
               faithfulness=args.faithfulness, distance=args.distance)


if __name__ == "__main__":
    run_main(main)
