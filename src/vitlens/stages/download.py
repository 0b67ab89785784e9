"""DVC stage `download`: data.source (the CIFAR-10 or CIFAR-100 archive, or the folder at
data.path) -> data/dataset.npz and its summary data/dataset.json (reads data.source, url,
md5, labels, path, test_size, skip_bad, retries, timeout_s, val_seed; model.image_size)."""
from __future__ import annotations

import argparse
from pathlib import Path

from vitlens.errors import run_main
from vitlens.pipeline.download import run_download


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, default=Path("data/dataset.npz"))
    ap.add_argument("--summary", type=Path, help="default: beside --out, as .json")
    args = ap.parse_args()
    run_download(args.params, args.out, args.summary or args.out.with_suffix(".json"))


if __name__ == "__main__":
    run_main(main)
