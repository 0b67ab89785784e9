"""Start the MLflow UI on the project's store, bound to this machine only.

    vitlens ui [--port 5000] [--workers 1]     (make ui)

One worker: the UI of one user's project starts in seconds, where MLflow's default of four
worker processes imports MLflow four times over.
"""
from __future__ import annotations

import argparse
import os
import sys

from vitlens.tracking.runs import tracking_uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=1, help="server processes (default: 1)")
    args = ap.parse_args()
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    uri = tracking_uri()
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port}", flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                              uri, "--host", args.host, "--port", str(args.port),
                              "--workers", str(args.workers)])


if __name__ == "__main__":
    main()
