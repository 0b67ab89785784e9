"""bf16 autocast against fp32 for one training step at a model's shapes, side by side in
alternating rounds, with the CPU's native-bf16 flags beside it: whether bf16 pays here."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from vitlens.config import Params
from vitlens.device import native_bf16_cpu
from vitlens.train.harness import (
    alternate,
    harness,
    paired_speedup,
    ready,
    summarize_calls,
    synthetic_split,
    time_calls,
)


def in_precision(p: Params, precision: str) -> Params:
    """`p` with train.precision set: the harness resolves it (device.use_bf16)."""
    return dataclasses.replace(p, train=dataclasses.replace(p.train, precision=precision))


def stepper(p: Params, batch_size: int, device: torch.device) -> tuple[Callable[[], object], str]:
    """The training step of a fresh model and optimizer (seed 0) on one ready batch, and the
    dtype its logits came out in (what autocast really did)."""
    split, norm = synthetic_split(batch_size, device)
    h = harness(p, ready(norm(split.x), split.y), device)
    time_calls(h.step, 1, device)  # warm-up: allocations, oneDNN's kernel choice
    return h.step, str(h.step()[1].dtype).removeprefix("torch.")


def bench_precision(p: Params, batch_size: int, *, steps: int, rounds: int,
                    device: torch.device) -> dict[str, Any]:
    """Median step time in fp32 and in bf16 autocast of `p`'s model at `batch_size`, and
    bf16's paired speedup (above 1: bf16 is faster)."""
    made = {name: stepper(in_precision(p, name), batch_size, device) for name in ("fp32", "bf16")}
    times = alternate({name: fn for name, (fn, _) in made.items()}, n=steps, rounds=rounds,
                      device=device)
    out = {name: {**summarize_calls(t, batch_size), "logits_dtype": made[name][1]}
           for name, t in times.items()}
    return {"batch_size": batch_size,
            "native_bf16_flags": native_bf16_cpu() if device.type == "cpu" else [],
            **out, "speedup_bf16_over_fp32": paired_speedup(out["bf16"], out["fp32"])}
