"""The compare page's size and speed budget (docs/compare.md#size-and-speed), on two real models:
the page under 15 MB, open in Chromium in under 2 s, and built in under twice the time the
report stage takes for one of them.

    python -m benchmarks.compare_check A B [--data data/dataset.npz] [--params params.yaml]
        [--rounds 2] [--out compare-check]

A and B are anything `vitlens compare` takes. The report stage (of B) and `vitlens compare A B`
are timed as a user runs them, each a process (`python -m vitlens.stages.report`, `python -m
vitlens compare`), in alternating rounds, tracking off; beside them the time each spends in its
own work after the imports (the seconds it prints). The page is then opened `--opens` times
in headless Chromium (Playwright, /usr/bin/chromium or `chromium` on the PATH), network
blocked, and its time to ready read from the page (window.vitlens.loadMs, since navigation).
Prints one JSON line; exits 1 when over budget.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.bench_report import cpu_model
from vitlens.cli.refs import resolve

BUDGET = {"bytes": 15 * 2**20, "open_ms": 2000.0, "build_over_report": 2.0}


def untracked(params: Path, folder: Path) -> Path:
    """A copy of `params` with tracking off: the check logs nothing."""
    raw = yaml.safe_load(params.read_text())
    raw["tracking"]["enabled"] = False
    out = folder / "params.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def open_times(page: Path, opens: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(opens):
            ctx = browser.new_context(viewport={"width": 1500, "height": 1000})
            ctx.route(re.compile(r"^(?!file:).*"), lambda route: route.abort())
            pg = ctx.new_page()
            pg.goto(page.resolve().as_uri())
            pg.wait_for_function("window.vitlens && (window.vitlens.ready || window.vitlens.error)",
                                 timeout=60_000)
            if pg.evaluate("window.vitlens.error || null"):
                raise SystemExit(f"the page failed: {pg.evaluate('window.vitlens.error')}")
            out.append(float(pg.evaluate("window.vitlens.loadMs")))
            ctx.close()
        browser.close()
    return out


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds of the process, the seconds of its own work it printed: "in 2.3s")."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    return wall, float(re.findall(r" in ([0-9.]+)s", out)[-1])


def median(runs: list[tuple[float, float]], i: int) -> float:
    return statistics.median(r[i] for r in runs)


def check(a: str, b: str, *, params: Path, data: Path, out: Path, rounds: int, opens: int) -> dict[str, Any]:
    report, build = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        quiet = untracked(params, folder)
        model_b = resolve(b, folder / "b").path
        for _ in range(rounds):
            report.append(timed([sys.executable, "-m", "vitlens.stages.report", "--params", str(quiet),
                                 "--model", str(model_b), "--data", str(data),
                                 "--out", str(folder / "explorer" / "index.html")]))
            build.append(timed([sys.executable, "-m", "vitlens", "compare", a, b, "--out", str(out),
                                "--params", str(quiet), "--data", str(data)]))
    page = out / "index.html"
    result: dict[str, Any] = {"cpu": cpu_model(), "a": a, "b": b, "bytes": page.stat().st_size,
              "report_s": median(report, 0), "build_s": median(build, 0),
              "report_work_s": median(report, 1), "build_work_s": median(build, 1),
              "open_ms": open_times(page, opens)}
    result["build_over_report"] = result["build_s"] / result["report_s"]
    result["over_budget"] = [k for k, v in (("bytes", result["bytes"]), ("open_ms", max(result["open_ms"])),
                                             ("build_over_report", result["build_over_report"])) if v >= BUDGET[k]]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--data", type=Path, default=Path("data/dataset.npz"))
    ap.add_argument("--out", type=Path, default=Path("compare-check"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--opens", type=int, default=3)
    args = ap.parse_args()
    r = check(args.a, args.b, params=args.params, data=args.data, out=args.out, rounds=args.rounds,
              opens=args.opens)
    print(json.dumps(r))
    print(f"{r['bytes'] / 2**20:.1f} MB, built in {r['build_s']:.1f} s ({r['build_over_report']:.2f}x the report "
          f"stage's {r['report_s']:.1f} s; their own work {r['build_work_s']:.1f} s and "
          f"{r['report_work_s']:.1f} s), "
          f"open in {max(r['open_ms']):.0f} ms at most on {r['cpu']}: "
          + (f"over budget: {', '.join(r['over_budget'])}" if r["over_budget"] else "within budget"))
    sys.exit(1 if r["over_budget"] else 0)


if __name__ == "__main__":
    main()
