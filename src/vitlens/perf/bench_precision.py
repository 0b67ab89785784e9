"""bf16 autocast against fp32 for one training step at a model's shapes, side by side in
alternating rounds, with the CPU's native-bf16 flags beside it: whether bf16 pays here."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vitlens.config import Params
from vitlens.device import native_bf16_cpu
from vitlens.model.vit import build_model
from vitlens.perf.bench_data import NUM_CLASSES, synthetic_images
from vitlens.perf.timing import alternate, paired_speedup, summarize_calls, time_calls
from vitlens.train.step import make_optimizer, optimizer_step


def stepper(p: Params, x: Tensor, y: Tensor, *, bf16: bool,
            device: torch.device) -> tuple[Callable[[], None], str]:
    """One training step of a fresh model and optimizer (seed 0) on the batch (x, y), and
    the dtype its logits came out in (what autocast really did)."""
    torch.manual_seed(0)
    model = build_model(p.model, NUM_CLASSES).to(device).train()
    opt = make_optimizer(model, p.train, device)

    def step() -> None:
        optimizer_step(model, model, opt, x, y, p.train, device, bf16=bf16)
    time_calls(step, 1, device)  # warm-up: allocations, oneDNN's kernel choice
    _, logits = optimizer_step(model, model, opt, x, y, p.train, device, bf16=bf16)
    return step, str(logits.dtype).removeprefix("torch.")


def bench_precision(p: Params, batch_size: int, *, steps: int, rounds: int,
                    device: torch.device) -> dict[str, Any]:
    """Median step time in fp32 and in bf16 autocast of `p`'s model at `batch_size`, and
    bf16's paired speedup (above 1: bf16 is faster)."""
    x8, y8 = synthetic_images(batch_size)
    x = (torch.from_numpy(x8).float().div(255) - 0.5).to(device)  # (B, 3, H, W)
    y = torch.from_numpy(y8).to(device)
    made = {name: stepper(p, x, y, bf16=bf16, device=device)
            for name, bf16 in (("fp32", False), ("bf16", True))}
    times = alternate({name: fn for name, (fn, _) in made.items()}, n=steps, rounds=rounds,
                      device=device)
    out = {name: {**summarize_calls(t, batch_size), "logits_dtype": made[name][1]}
           for name, t in times.items()}
    return {"batch_size": batch_size,
            "native_bf16_flags": native_bf16_cpu() if device.type == "cpu" else [],
            **out, "speedup_bf16_over_fp32": paired_speedup(out["bf16"], out["fp32"])}
