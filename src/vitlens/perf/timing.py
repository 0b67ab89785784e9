"""Timing that a busy machine and an asynchronous GPU cannot fool: each call ends with a
device sync, contenders run in alternating rounds (A, B, B, A, ...) so that drifting
background load hits every side alike, and results are medians."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_calls(fn: Callable[[], Any], n: int, device: torch.device) -> list[float]:
    """Seconds of each of `n` calls, each ended by a device sync (CUDA runs asynchronously)."""
    out = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def alternate(fns: dict[str, Callable[[], Any]], *, n: int, rounds: int,
              device: torch.device) -> dict[str, list[list[float]]]:
    """`n` timed calls of every fn, split into `rounds` blocks whose order flips each round;
    seconds by round."""
    times: dict[str, list[list[float]]] = {name: [] for name in fns}
    order = list(fns)
    rounds = max(1, min(rounds, n))
    for r in range(rounds):
        k = n // rounds + (r < n % rounds)
        for name in order if r % 2 == 0 else order[::-1]:
            times[name].append(time_calls(fns[name], k, device))
    return times


def summarize_calls(by_round: list[list[float]], images: int) -> dict[str, Any]:
    """Median seconds per call and the images/s it gives; `images` per call."""
    seconds = [t for r in by_round for t in r]
    median = statistics.median(seconds)
    return {"images_per_second": images / median, "median_s": median, "seconds": seconds,
            "round_medians_s": [statistics.median(r) for r in by_round]}


def paired_speedup(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Median over rounds of a's speed over b's: a round's adjacent blocks share the same
    background load, so this ratio survives load that changes between rounds."""
    return statistics.median(tb / ta for ta, tb in zip(a["round_medians_s"],
                                                       b["round_medians_s"]))
