"""A recipe search chosen on the validation split alone. Each candidate (search.yaml) is the
checked params with a few keys changed, trained for the same epochs; the best final
validation accuracy wins, and only the winner is evaluated on the test set, once.

search.yaml:
    candidates:
      - name: patch2          # letters, digits, '_' and '-'
        why: 4x the tokens at the default's cost
        set: {model.patch_size: 2, model.dim: 192, model.heads: 3}
"""
from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.bench_report import markdown_table
from benchmarks.gpucheck.runner import Check
from vitlens.config import ConfigError, exp_run_flags, parse_params, set_key
from vitlens.train.loop import training_flops

BASELINE = "default"  # the checked params themselves, trained before the candidates


@dataclass(frozen=True)
class Candidate:
    name: str
    why: str
    changes: dict[str, Any]  # {"model.patch_size": 2, ...}
    raw: dict[str, Any]      # the whole params with the changes, validated
    cost: float              # training FLOPs relative to the baseline's


def relative_cost(raw: dict[str, Any], base: dict[str, Any]) -> float:
    """Training FLOPs of `raw` over those of `base`: per image, times images, times epochs."""
    return training_flops(parse_params(raw)) / training_flops(parse_params(base))


def load_candidates(path: str | Path, base: dict[str, Any]) -> list[Candidate]:
    """The candidates of `path`, each validated as params; a bad one fails the whole file
    with a one-line error naming it, before any training."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"search file {path}: {str(e).splitlines()[0]}") from None
    items = doc.get("candidates") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError(f"search file {path} must hold a non-empty list `candidates`")
    out: list[Candidate] = []
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"search file {path}, candidate {name or i + 1}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ConfigError(f"{where}: `name` must be letters, digits, '_' or '-'")
        if name == BASELINE or name in {c.name for c in out}:
            raise ConfigError(f"{where}: the name is taken")
        changes = item.get("set")
        if not isinstance(changes, dict) or not changes:
            raise ConfigError(f"{where}: `set` must map section.key to a value")
        raw = copy.deepcopy(base)
        try:
            for key, value in changes.items():
                set_key(raw, key, value)
            cost = relative_cost(raw, base)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        out.append(Candidate(name, str(item.get("why", "")), dict(changes), raw, cost))
    return out


def choose(val_acc: dict[str, float]) -> str:
    """The name with the best validation accuracy; on a tie, the first (the cheaper prior)."""
    return max(val_acc, key=lambda name: val_acc[name])


def search_table(rows: list[dict[str, Any]]) -> str:
    """The search as a Markdown table, best validation accuracy first."""
    body = []
    for r in sorted(rows, key=lambda r: -(r["val_acc"] if r["val_acc"] is not None else -1)):
        acc = f"{r['val_acc']:.4f}" if r["val_acc"] is not None else r["status"]
        secs = f"{r['train_s']:.1f}" if r["train_s"] is not None else "-"
        changes = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "(params.yaml)"
        body.append([r["name"], changes, f"{r['cost']:.2f}x", acc, secs])
    return markdown_table(body, ["candidate", "changes", "cost", "val acc", "train s"])


def run_search(check: Check, candidates: list[Candidate], *,
               train: Callable[[str, dict[str, Any]], dict[str, Any]],
               test: Callable[[str], dict[str, Any]], baseline: str, evaluated: str,
               below: float) -> None:
    """When the `evaluated` test accuracy of the `baseline` training step is below `below`:
    train(name, params) each candidate as a step of `check` (budget permitting, in file
    order), choose the best on validation accuracy, test(name) it unless it is the baseline,
    and record the table in check.result["search"]."""
    base, acc = check.get(baseline), check.get(evaluated).get("accuracy")
    rows = [_row(BASELINE, {}, 1.0, base)]
    result: dict[str, Any] = {"rows": rows, "best": None, "below": below}
    check.result["search"] = result
    if acc is not None and acc >= below:
        result["skipped"] = f"the default's test accuracy {acc:.4f} is at least {below:g}"
        check.say(f"skip the search: {result['skipped']}")
        return
    for c in candidates:
        name = f"search_{c.name}"
        check.optional.add(name)
        check.step(name, functools.partial(train, c.name, c.raw), needs=(baseline,),
                   estimate=base.get("seconds", 0.0) * c.cost)
        rows.append(_row(c.name, c.changes, c.cost, check.get(name)))
    scored = {r["name"]: r["val_acc"] for r in rows if r["val_acc"] is not None}
    if scored:
        best = result["best"] = choose(scored)
        result["best_changes"] = rows[[r["name"] for r in rows].index(best)]["changes"]
        if best != BASELINE:
            check.step("search_best_test", lambda: test(best))
            result["best_test_acc"] = check.get("search_best_test").get("accuracy")
        else:
            result["best_test_acc"] = acc
    result["table"] = search_table(rows)
    check.say("search, chosen on validation accuracy:\n" + result["table"])
    if result.get("best_changes"):
        result["adopt"] = "dvc exp run " + exp_run_flags(result["best_changes"])
        tested = result["best_test_acc"]
        check.say(f"best: {result['best']}, test accuracy "
                  f"{'not measured' if tested is None else f'{tested:.4f}'}; "
                  f"to adopt it: {result['adopt']}")
    check.save()


def _row(name: str, changes: dict[str, Any], cost: float, step: dict[str, Any]) -> dict[str, Any]:
    ok = step.get("status") == "ok"
    return {"name": name, "changes": changes, "cost": cost, "status": step.get("status", "-"),
            "val_acc": step["final_val_acc"] if ok else None,
            "train_s": step["train_s"] if ok else None}
