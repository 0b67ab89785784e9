"""Start the MLflow UI on the project's store, bound to this machine only.

    python -m vitlens.cli.ui [--port 5000]     (make ui)
"""
from __future__ import annotations

import argparse
import os
import sys

from vitlens.tracking import tracking_uri


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000)
    args = ap.parse_args()
    uri = tracking_uri()
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port}", flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                              uri, "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    main()
