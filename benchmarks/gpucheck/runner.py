"""The step runner of a one-go check (benchmarks.gpucheck.check): the clock, the time budget, and one
JSON of every step's status, seconds and results, rewritten after each step so that a timeout
keeps what finished."""
from __future__ import annotations

import io
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from vitlens.errors import VitlensError
from vitlens.io import write_json


class Skip(Exception):
    """A phase that cannot run here, for a reason that is not a failure."""


class Tee(io.TextIOBase):
    """stdout to the terminal and the log at once, flushed per write so a kill loses nothing."""

    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
            st.flush()
        return len(s)


class Check:
    """The clock, the budget and the results, written to `path` after every step. Only the
    `optional` steps are skipped for the budget; `skip` names steps not to run at all."""

    def __init__(self, path: Path, budget_s: float, *, optional: Iterable[str], skip: Iterable[str]):
        self.path, self.budget_s, self.optional, self.skip = path, budget_s, set(optional), set(skip)
        self.t0 = time.perf_counter()
        self.result: dict[str, Any] = {"budget_s": budget_s, "steps": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, msg: str) -> None:
        print(f"[{self.elapsed():5.0f}s] {msg}", flush=True)

    def save(self) -> None:
        self.result["elapsed_s"] = self.elapsed()
        write_json(self.path, self.result)

    def get(self, name: str) -> dict[str, Any]:
        return self.result["steps"].get(name, {})

    def ok(self, name: str) -> bool:
        return self.get(name).get("status") == "ok"

    def _skip_reason(self, name: str, needs: tuple[str, ...], estimate: float) -> str:
        missing = [n for n in needs if not self.ok(n)]
        if missing:
            return f"needs {', '.join(missing)}, which did not finish"
        if name in self.skip:
            return f"--skip {name}"
        left = self.budget_s - self.elapsed()
        if name in self.optional and estimate > left:
            return f"needs ~{estimate:.0f}s, {max(left, 0):.0f}s left of --budget-s {self.budget_s:g}"
        return ""

    def step(self, name: str, fn: Callable[[], dict[str, Any]], *, needs: tuple[str, ...] = (),
             estimate: float = 0.0, fatal: bool = False) -> None:
        """Run one phase unless skipped; record its status, seconds and results or error."""
        reason = self._skip_reason(name, needs, estimate)
        if reason:
            self.say(f"skip {name}: {reason}")
            self.result["steps"][name] = {"status": "skipped", "skipped": reason}
            self.save()
            return
        eta = f", ETA ~{estimate:.0f}s" if estimate else ""
        self.say(f"{name}: start{eta} ({self.budget_s - self.elapsed():.0f}s of the budget left)")
        t = time.perf_counter()
        rec: dict[str, Any] = {"status": "interrupted"}  # what a timeout's SIGTERM leaves
        try:
            rec = {"status": "ok", **fn()}
        except Skip as e:
            rec = {"status": "skipped", "skipped": str(e)}
        except VitlensError as e:
            rec = {"status": "failed", "error": str(e)}
            if fatal:
                raise
        except Exception as e:  # noqa: BLE001 - one broken phase must not lose the others
            traceback.print_exc(file=sys.stdout)
            rec = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        finally:
            rec["seconds"] = time.perf_counter() - t
            self.result["steps"][name] = rec
            self.save()
        detail = rec.get("error") or rec.get("skipped")
        self.say(f"{name}: {rec['status']} in {rec['seconds']:.1f}s" + (f": {detail}" if detail else ""))
