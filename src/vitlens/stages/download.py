"""DVC stage `download`: CIFAR-10 archive -> data/cifar10.npz (reads data.url, data.md5,
data.retries, data.timeout_s)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from vitlens.config import load_params
from vitlens.data.cifar import prepare
from vitlens.errors import run_main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, default=Path("data/cifar10.npz"))
    args = ap.parse_args()
    d = load_params(args.params).data
    t0 = time.perf_counter()
    data = prepare(d.url, d.md5, args.out, retries=d.retries, timeout_s=d.timeout_s)
    print(f"wrote {args.out}: {len(data.x_train)} train + {len(data.x_test)} test images, "
          f"{len(data.classes)} classes in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    run_main(main)
