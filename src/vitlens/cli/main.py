"""`vitlens COMMAND ...`: one entry point for the commands outside the DVC pipeline.

    vitlens predict photo.jpg shots/ [--out overlays/]     predict your own pictures
    vitlens reproduce RUN_ID [--out params.yaml]           the params an MLflow run was trained with
    vitlens ui [--port 5000]                               the MLflow UI on the project's store
    vitlens serve [--model-uri models:/vitlens-cifar10/1]  serve the model over HTTP, batched
    vitlens cpu-preset                                     make repro-cpu's flags for this CPU
    vitlens loadtest --model-uri ...                       a served model's speed beside in-process
    vitlens compare A B [--out reports/compare]            where two models look, in one page

`python -m vitlens COMMAND ...` is the same; each command's module also runs on its own
(`python -m vitlens.cli.predict ...`). The benches and the GPU check are not installed: they
run from a checkout (`make bench`, `make gpu-check`; the benchmarks/ folder).
"""
from __future__ import annotations

import importlib
import sys

from vitlens.errors import run_main

COMMANDS = {"predict": "vitlens.cli.predict", "reproduce": "vitlens.cli.reproduce",
            "ui": "vitlens.cli.ui", "serve": "vitlens.cli.serve",
            "cpu-preset": "vitlens.cli.cpu_preset", "loadtest": "vitlens.cli.loadtest",
            "compare": "vitlens.cli.compare"}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    # Each command parses sys.argv itself, so it sees exactly what it would on its own.
    sys.argv = [f"vitlens {name}", *rest]
    run_main(importlib.import_module(COMMANDS[name]).main)


if __name__ == "__main__":
    main()
