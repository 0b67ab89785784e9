"""What a training step spends its time on, in the few numbers that say what to fix: the
step's wall time, the share of it the GPU is busy, kernels launched and host syncs per step,
the input pipeline's share and the top kernels (on a CPU: the top ops).

The steps are loop.train's own (vitlens.train.harness): augmented batches from the
on-device pipeline, step.optimizer_step in the params' precision, the weight average's update
and the running epoch sums, at the params' batch size and model.
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from vitlens.config import Params
from vitlens.data.imageset import ImageSet
from vitlens.data.normalize import Normalizer
from vitlens.data.split import Split, batch_indices
from vitlens.device import pick_device
from vitlens.model.vit import train_flops_per_image
from vitlens.train.harness import augmented, harness, sync, time_calls
from vitlens.train.loop import device_splits
from vitlens.train.step import EpochStats

TOP = 12  # kernels (or ops) listed
# Eager, compiled, compiled with CUDA graphs. Only eager on a CPU: compiling there takes
# minutes and says nothing about the GPU.
CUDA_MODES: tuple[str | None, ...] = (None, "default", "reduce-overhead")
NAME_CHARS = 100  # a kernel's name is cut to this: templated names run to thousands


def host_syncs(fn: Callable[[], object]) -> int:
    """How many synchronizing CUDA calls `fn` makes (torch's sync debug mode warns on each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def summarize_profile(rows: Iterable[tuple[str, int, float, bool]], steps: int, step_s: float,
              top: int = TOP) -> dict[str, Any]:
    """Profiler rows (name, calls, self microseconds, ran on the GPU) of `steps` steps of
    `step_s` seconds each -> per-step totals and the top entries. With GPU rows the kernels
    are ranked and their sum is the GPU's busy time; without, the CPU ops are ranked."""
    rows = list(rows)
    on_gpu = any(gpu for *_, gpu in rows)
    ranked = sorted((r for r in rows if r[3] == on_gpu), key=lambda r: r[2], reverse=True)
    busy_s = sum(us for _, _, us, _ in ranked) / 1e6 / steps
    out: dict[str, Any] = {
        "ranked_by": "GPU kernel time" if on_gpu else "CPU self time",
        "top": [{"name": name[:NAME_CHARS], "calls_per_step": calls / steps,
                 "ms_per_step": us / 1e3 / steps, "share_of_step": us / 1e6 / steps / step_s}
                for name, calls, us, _ in ranked[:top]]}
    if on_gpu:
        out["kernels_per_step"] = sum(calls for _, calls, _, _ in ranked) / steps
        out["gpu_busy_ms_per_step"] = busy_s * 1e3
        out["gpu_busy_share"] = busy_s / step_s
    return out


def profiler_rows(prof: profile) -> list[tuple[str, int, float, bool]]:
    """(name, calls, self µs, is a GPU kernel) per distinct op or kernel."""
    return [(a.key, a.count, a.self_device_time_total if a.device_type.name == "CUDA"
             else a.self_cpu_time_total, a.device_type.name == "CUDA")
            for a in prof.key_averages()]


def verdict(p: dict[str, Any]) -> str:
    """One line: what the numbers say stands between this step and the GPU's speed."""
    if p.get("syncs_per_step", 0) >= 1:
        return f"{p['syncs_per_step']:.1f} host syncs per step: the GPU idles while the CPU waits"
    if p["input_share"] > 0.2:
        return f"the input pipeline takes {p['input_share']:.0%} of a step"
    share = p.get("gpu_busy_share")
    if share is not None and share < 0.7:
        return (f"launch-bound: the GPU is busy {share:.0%} of a step across "
                f"{p['kernels_per_step']:.0f} kernels; fewer launches (compile, CUDA graphs) help")
    if not p["top"]:
        return "compute-bound"
    top = p["top"][0]
    return f"compute-bound: the top entry, {top['name'][:60]}, takes {top['share_of_step']:.0%}"


def profile_training(params: Params, split: Split, norm: Normalizer, *, mode: str | None,
                     steps: int = 20, warmup: int = 10, top: int = TOP,
                     num_classes: int = 10) -> dict[str, Any]:
    """Profile the training step of `params` on `split` (on its device): eager when `mode`
    is None, else torch.compile in that mode. Times `steps` steps after `warmup` (which
    holds the compiling), then profiles as many again."""
    t, device = params.train, split.x.device
    gen = torch.Generator(device).manual_seed(t.seed)
    order = itertools.cycle(list(batch_indices(len(split), t.batch_size, gen)))
    batch = augmented(split, norm, t, seed=t.seed, order=order)
    h = harness(params, batch, device, compile_mode=mode, num_classes=num_classes, seed=t.seed)
    stats = EpochStats(device)

    def run(n: int) -> None:
        for _ in range(n):
            stats.add(*h.step())

    def timed(fn: Callable[[], object]) -> float:
        return time_calls(fn, 1, device)[0]

    warmup_s = timed(lambda: run(warmup))
    step_s = timed(lambda: run(steps)) / steps
    input_s = timed(lambda: [batch() for _ in range(steps)]) / steps
    gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])]) as prof:
        run(steps)
        sync(device)
    flops = train_flops_per_image(params.model) * t.batch_size
    out = {"mode": mode or "eager", "batch_size": t.batch_size, "steps": steps,
           "warmup_s": warmup_s, "step_ms": step_s * 1e3,
           "images_per_second": t.batch_size / step_s, "achieved_tflops": flops / step_s / 1e12,
           "input_ms": input_s * 1e3, "input_share": input_s / step_s,
           **summarize_profile(profiler_rows(prof), steps, step_s, top)}
    if gpu:
        out["syncs_per_step"] = host_syncs(lambda: run(steps)) / steps
    out["verdict"] = verdict(out)
    return out


def profile_modes(params: Params, data: ImageSet) -> dict[str, Any]:
    """profile_training of every mode (CUDA_MODES on CUDA, eager elsewhere) on the training
    split of `data`, and which mode's step is fastest."""
    device = pick_device(params.train.device)
    split, _, norm = device_splits(params, data, device)
    modes = CUDA_MODES if device.type == "cuda" else (None,)
    runs: list[dict[str, Any]] = []
    for m in modes:
        try:
            r = profile_training(params, split, norm, mode=m, num_classes=len(data.classes))
        except Exception as e:  # noqa: BLE001 - a mode that fails to compile loses only itself
            print(f"profile {m or 'eager'}: failed: {type(e).__name__}: "
                  f"{(str(e).splitlines() or [''])[0]}", flush=True)
            runs.append({"mode": m or "eager", "error": f"{type(e).__name__}: {e}"[:2000]})
            continue
        print(f"profile {r['mode']}: {r['step_ms']:.2f} ms/step, {r['achieved_tflops']:.1f} "
              f"TFLOP/s; {r['verdict']}", flush=True)
        runs.append(r)
    timed = [r for r in runs if "step_ms" in r]
    return {"runs": runs, "fastest": min(timed, key=lambda r: r["step_ms"])["mode"] if timed else None}
