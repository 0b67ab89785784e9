"""Reproduce an MLflow run: write the params.yaml it was trained with and say which commit.

    python -m vitlens.cli.reproduce RUN_ID [--out params.yaml]
    git checkout <the printed commit> && dvc repro   (or: dvc exp apply <dvc_exp_name>)
"""
from __future__ import annotations

import argparse

import yaml

from vitlens.config import parse_params
from vitlens.errors import run_main
from vitlens.io import atomic_path
from vitlens.tracking import runs


def write_run_params(run_id: str, out: str) -> dict[str, str]:
    """Validate and write the run's params to `out`; return its tags."""
    params, tags = runs.run_params(run_id)
    parse_params(params)
    with atomic_path(out) as tmp:
        tmp.write_text(yaml.safe_dump(params, sort_keys=False))
    return tags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_id")
    ap.add_argument("--out", default="params.yaml")
    args = ap.parse_args()
    tags = write_run_params(args.run_id, args.out)
    commit = tags.get("dvc_exp_baseline_rev") or tags.get("git_commit", "")
    print(f"wrote {args.out} from MLflow run {args.run_id}")
    if commit:
        print(f"code: git checkout {commit} -- src dvc.yaml   then: dvc repro")
    if tags.get("dvc_exp_name"):
        print(f"or, while the experiment exists: dvc exp apply {tags['dvc_exp_name']}")


if __name__ == "__main__":
    run_main(main)
