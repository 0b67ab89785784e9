"""One prepared GPU check, in one go:

    PYTHONPATH=src python -m benchmarks.gpucheck --archive cifar-10-python.tar.gz --md5 HEX --out DIR

Prepares the archive with the download stage's code, trains the params.yaml recipe eager and
then with torch.compile (bf16 autocast on CUDA), evaluates on the test set, renders every
figure, profiles the training step (eager, compiled, CUDA graphs), runs `pytest -m gpu` and
the bench, and, when the default's test accuracy is below --search-below, trains the recipe
candidates of --search in the budget left and tests the one best on validation. Writes one small
results folder: gpu_check.json (rewritten after every step, so a timeout keeps what
finished), the figures and the log. Data and model files go to a work folder outside it.
Needs no DVC, git or make; MLflow is used when it imports. A failed step is recorded and the
others still run; a bad archive or search file stops the check before any training.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.bench_report import environment
from benchmarks.gpucheck import search
from benchmarks.gpucheck.runner import Check, Skip, Tee
from benchmarks.profiling import profile_modes
from vitlens.config import load_params, parse_params, set_key
from vitlens.data.cifar import prepare
from vitlens.data.imageset import load_arrays
from vitlens.device import pick_device, use_bf16
from vitlens.errors import VitlensError, run_main
from vitlens.model.trained import load_trained
from vitlens.pipeline.evaluate import run_evaluation
from vitlens.pipeline.train import run_training
from vitlens.pipeline.visualize import run_visualize
from vitlens.tracking import runs

ROOT = Path(__file__).resolve().parents[2]  # the repository: tests/ lives here
# The results folder stays small enough to attach to an issue or mail whole: 8 files (the
# JSON, the log, six figures), none over 16 MB. Data and models go to the work folder.
MAX_FILES, MAX_BYTES = 8, 16 * 2**20
OPTIONAL = ("train_compiled", "profile", "pytest_gpu", "bench")  # the budget may skip these
# Guesses in seconds on a recent data-centre GPU for what no finished phase predicts; the
# JSON records the actual times to correct them with. The profile compiles twice (default,
# CUDA graphs).
COMPILE_S, PROFILE_S, PYTEST_S, BENCH_S, QUICK_BENCH_S = 60.0, 120.0, 45.0, 90.0, 20.0
BUDGET_S = 3600.0  # an hour: the default recipe's phases, and several search candidates
TARGET_ACC = 0.85  # the default recipe's goal on a GPU: below it, the check searches recipes


def mlflow_version() -> str | None:
    """The MLflow version, or None with a one-line notice when it does not import."""
    try:
        import mlflow
    except ImportError as e:
        print(f"MLflow not importable ({e}): tracking is off for this check", flush=True)
        return None
    return str(mlflow.__version__)


def check_params(args: argparse.Namespace, tracking_on: bool) -> dict[str, Any]:
    """params.yaml with the archive, --epochs and --set applied, validated as the stages do."""
    raw = load_params(args.params).to_dict()
    raw["data"].update(url=str(Path(args.archive).expanduser().resolve()), md5=args.md5)
    t = raw["train"]
    if args.epochs:  # keep the warmup's share of the schedule
        t["warmup_epochs"] = t["warmup_epochs"] * args.epochs / t["epochs"]
        t["epochs"] = args.epochs
    for item in args.set:
        key, eq, text = item.partition("=")
        if not eq:
            raise VitlensError(f"--set {item!r} must be section.key=value")
        set_key(raw, key, yaml.safe_load(text))
    t["nproc"] = 1  # one device: the check is about a single GPU
    raw["tracking"]["enabled"] = raw["tracking"]["enabled"] and tracking_on
    return parse_params(raw).to_dict()


def params_folder(folder: Path, raw: dict[str, Any]) -> Path:
    """`folder` with the params file the stages read."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


def write_variant(work: Path, raw: dict[str, Any], compile_: bool) -> Path:
    """The params folder of the eager or the compiled run."""
    return params_folder(work / ("compiled" if compile_ else "eager"),
                         {**raw, "train": {**raw["train"], "compile": compile_}})


def machine(mlflow: str | None, precision: str) -> dict[str, Any]:
    """The device the check trains on (train.device auto), `precision` as it resolves there,
    the versions and the commit."""
    device = pick_device("auto")
    cuda = device.type == "cuda"
    env = environment(device, importlib.metadata.version("timm")
                      if importlib.util.find_spec("timm") else "not installed",
                      "bf16" if use_bf16(precision, device) else "fp32")
    return {**env, "gpu": env["device_name"] if cuda else "none (no CUDA device)",
            "gpu_memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30
            if cuda else 0, "cuda": torch.version.cuda, "mlflow": mlflow or "not importable",
            "git_commit": runs.git_commit(ROOT)}


def train_phase(folder: Path, data: Path) -> dict[str, Any]:
    ckpt = folder / "checkpoint.pt"
    ckpt.unlink(missing_ok=True)  # a stale checkpoint would resume and skew the timings
    run_training(load_params(folder / "params.yaml"), data, folder / "model.pt",
                 folder / "history.csv", ckpt)
    history = load_trained(folder / "model.pt", "cpu").history
    seconds = [r["epoch_seconds"] for r in history]
    return {"epochs": len(history), "train_s": sum(seconds), "first_epoch_s": seconds[0],
            "median_epoch_s": statistics.median(seconds[1:] or seconds),
            "final_val_acc": history[-1]["val_acc"], "history": history}


def evaluate_phase(folder: Path, data: Path, out: Path | None) -> dict[str, Any]:
    metrics = run_evaluation(str(folder / "params.yaml"), folder / "model.pt", data,
                             folder / "eval", folder / "metrics.json")
    if out is not None:
        shutil.copyfile(folder / "eval" / "confusion.png", out / "confusion.png")
    return metrics


def visualize_phase(folder: Path, data: Path, out: Path) -> dict[str, Any]:
    run_visualize(str(folder / "params.yaml"), folder / "model.pt", data, folder / "figures")
    figures = sorted(p.name for p in (folder / "figures").glob("*.png"))  # all the stage draws
    for name in figures:
        shutil.copyfile(folder / "figures" / name, out / name)
    return {"figures": figures}


def profile_phase(folder: Path, data: Path) -> dict[str, Any]:
    return profile_modes(load_params(folder / "params.yaml"), load_arrays(data))


def pytest_phase(timeout_s: float) -> dict[str, Any]:
    if importlib.util.find_spec("pytest") is None:
        raise Skip("pytest not installed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p",
                           "no:cacheprovider", "tests/test_gpu.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=max(timeout_s, 60))
    print(proc.stdout + proc.stderr, flush=True)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
    return {"returncode": proc.returncode, "all_passed": proc.returncode == 0,
            "counts": counts, "summary": last}


def bench_phase(params: Path, work: Path, quick: bool) -> dict[str, Any]:
    from benchmarks import bench  # imports torchvision's data pipeline and timm: only here

    out = work / "bench.json"
    bench.main(["--params", str(params), "--out", str(out), *(["--quick"] if quick else [])])
    r = json.loads(out.read_text())
    ratios = {k: r[part][k] for part, names in (("models", "ours_over_timm"),
                                                  ("pipeline", "ours_over_best_dataloader"))
              for k in (f"ratio_{names}", f"paired_ratio_{names}")}
    epochs = {k: {kk: vv for kk, vv in v.items() if kk != "seconds"} if isinstance(v, dict) else v
              for k, v in r["epochs"].items()}  # per-step seconds stay in the work folder
    return {"quick": quick, **ratios, "best_dataloader": r["pipeline"]["best_dataloader"],
            "epochs_estimate": epochs}


def test_accuracy(ev: dict[str, Any]) -> str:
    """`test accuracy 0.8123`, or why there is none (the evaluation failed or was skipped)."""
    if "accuracy" in ev:
        return f"test accuracy {ev['accuracy']:.4f}"
    detail = ev.get("error") or ev.get("skipped")
    return f"test accuracy not measured (evaluation {ev.get('status', 'not run')}" + \
        (f": {detail})" if detail else ")")


def compare(check: Check) -> dict[str, Any]:
    """Eager vs compiled, and the numbers the README's GPU row needs, printed in one line."""
    runs = {n: (check.get(f"train_{n}"), check.get(f"evaluate_{n}")) for n in ("eager", "compiled")
            if check.ok(f"train_{n}")}
    out: dict[str, Any] = {n: {"train_s": t["train_s"], "median_epoch_s": t["median_epoch_s"],
                               "test_acc": ev.get("accuracy")} for n, (t, ev) in runs.items()}
    check.say("; ".join(f"{n}: {t['epochs']} epochs in {t['train_s']:.1f}s (median epoch "
                        f"{t['median_epoch_s']:.2f}s), {test_accuracy(ev)}"
                        for n, (t, ev) in runs.items()) or "no training finished")
    if len(out) == 2:
        out["speedup_train"] = out["eager"]["train_s"] / out["compiled"]["train_s"]
        out["speedup_median_epoch"] = out["eager"]["median_epoch_s"] / out["compiled"]["median_epoch_s"]
    return out


def results_files(check: Check) -> None:
    files = {p.name: p.stat().st_size for p in sorted(check.path.parent.iterdir()) if p.is_file()}
    ok = len(files) <= MAX_FILES and max(files.values()) < MAX_BYTES
    check.result["files"] = {"bytes": files, "within_limits": ok}
    check.say(f"{check.path.parent}: {len(files)} files, largest {max(files.values()) / 2**20:.2f} MB "
              f"({'within' if ok else 'OVER'} the limits of {MAX_FILES} files, "
              f"{MAX_BYTES // 2**20} MB each)")


def run_check(args: argparse.Namespace, work: Path) -> None:
    check = Check(args.out / "gpu_check.json", args.budget_s, optional=OPTIONAL, skip=args.skip)
    mlflow = mlflow_version()
    raw = check_params(args, mlflow is not None)
    candidates = search.load_candidates(args.search, raw) if args.search else []
    check.result.update(command=sys.argv, environment=machine(mlflow, raw["train"]["precision"]),
                        params=parse_params(raw).flat())
    check.say(f"device {check.result['environment']['gpu']}, torch {torch.__version__}, "
              f"{raw['train']['epochs']} epochs per training, work folder {work}")
    data, eager, compiled = work / "cifar10.npz", write_variant(work, raw, False), write_variant(work, raw, True)
    d = raw["data"]
    check.step("prepare", lambda: {"train_images": len(prepare(
        d["url"], d["md5"], data, retries=0, timeout_s=d["timeout_s"]).x_train)}, fatal=True)
    check.step("train_eager", lambda: train_phase(eager, data))
    check.step("evaluate_eager", lambda: evaluate_phase(eager, data, args.out), needs=("train_eager",))
    check.step("visualize", lambda: visualize_phase(eager, data, args.out), needs=("train_eager",))
    check.step("train_compiled", lambda: train_phase(compiled, data),
               estimate=check.get("train_eager").get("seconds", 0) + COMPILE_S)
    check.step("evaluate_compiled", lambda: evaluate_phase(compiled, data, None),
               needs=("train_compiled",))
    check.result["eager_vs_compiled"] = compare(check)
    check.step("profile", lambda: profile_phase(eager, data), estimate=PROFILE_S)
    check.step("pytest_gpu", lambda: pytest_phase(check.budget_s - check.elapsed()), estimate=PYTEST_S)
    check.step("bench", lambda: bench_phase(eager / "params.yaml", work, args.quick_bench),
               estimate=QUICK_BENCH_S if args.quick_bench else BENCH_S)
    if candidates:
        search.run_search(
            check, candidates, baseline="train_eager", evaluated="evaluate_eager",
            below=args.search_below,
            train=lambda name, raw: train_phase(params_folder(work / "search" / name, raw), data),
            test=lambda name: evaluate_phase(work / "search" / name, data, None))
    results_files(check)
    check.save()
    check.say(f"wrote {args.out / 'gpu_check.json'}")


@contextlib.contextmanager
def work_folder(path: Path | None, out: Path) -> Iterator[Path]:
    """--work kept as given, else a temporary folder removed at the end; never inside --out."""
    if path is None:
        with tempfile.TemporaryDirectory(prefix="vitlens-gpu-check-") as d:
            yield Path(d)
        return
    if path.resolve().is_relative_to(out.resolve()):
        raise VitlensError(f"--work {path} must not be inside --out {out}: it holds GBs of data")
    path.mkdir(parents=True, exist_ok=True)
    yield path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", required=True, help="cifar-10-python.tar.gz")
    ap.add_argument("--md5", required=True, help="its MD5 (32 hex digits)")
    ap.add_argument("--out", type=Path, default=Path("gpu-check"), help="results folder")
    ap.add_argument("--work", type=Path, help="data and models (default: a temporary folder)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--epochs", type=int, help="epochs per training (warmup keeps its share)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a param, e.g. --set model.dim=32 (repeatable)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S,
                    help="seconds the check should take (default: an hour); the optional phases "
                    f"({', '.join(OPTIONAL)}, the search) that would not fit are skipped")
    ap.add_argument("--skip", action="append", default=[], choices=OPTIONAL)
    ap.add_argument("--quick-bench", action="store_true", help="the bench's --quick sizes")
    ap.add_argument("--search", default=str(ROOT / "search.yaml"),
                    help="recipe candidates trained in the budget left ('' = no search)")
    ap.add_argument("--search-below", type=float, default=TARGET_ACC,
                    help="search only when the default's test accuracy is below this")
    args = ap.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        ap.error("--epochs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "gpu_check.log", "w", encoding="utf-8") as log, \
            contextlib.redirect_stdout(Tee(sys.stdout, log)), \
            work_folder(args.work, args.out) as work:
        run_check(args, work)


if __name__ == "__main__":
    run_main(main)
