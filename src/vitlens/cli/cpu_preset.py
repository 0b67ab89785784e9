"""`vitlens cpu-preset`: the CPU preset's `dvc exp run` flags for this CPU (`make repro-cpu`
runs it). One epoch of the fp32 preset and one of the recipe (in bf16 where the CPU has it
natively, in fp32 elsewhere) are timed side by side here (train steps in alternating rounds,
and a validation pass each), and the recipe gets the epochs that fit in the fp32 preset's 20.
The flags go to stdout, the measurement and the choice to stderr."""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch

from vitlens.config import Params, exp_run_flags, load_params
from vitlens.device import native_bf16_cpu
from vitlens.errors import run_main
from vitlens.train import preset
from vitlens.train.harness import (
    alternate,
    augmented,
    harness,
    paired_speedup,
    summarize_calls,
    synthetic_split,
    time_calls,
    validation_pass,
)
from vitlens.train.loop import epoch_images

CPU = torch.device("cpu")


def epoch_parts(p: Params, val_batch: int) -> tuple[Callable[[], object], Callable[[], None]]:
    """An epoch's two parts as loop.train runs them (vitlens.train.harness), in p's
    precision: a train step (an augmented batch made from uint8 images, the optimizer step,
    the weight average's update) and a validation pass of `val_batch` images through what
    the run validates (the average when train.ema is on)."""
    split, norm = synthetic_split(max(p.train.batch_size, val_batch), CPU)
    h = harness(p, augmented(split, norm, p.train), CPU)
    validated = h.ema.model if h.ema is not None else h.model
    return h.step, validation_pass(validated, norm(split.x[:val_batch]), CPU, bf16=h.bf16)


def epoch_seconds(fp32: Params, recipe: Params, *, steps: int, rounds: int) -> dict[str, Any]:
    """Seconds an epoch of each (train steps at its batch size plus its validation passes),
    from median step and pass times in alternating rounds; the recipe's paired step speedup."""
    subjects = {"fp32": fp32, "recipe": recipe}
    fns: dict[str, Callable[[], object]] = {}
    for name, p in subjects.items():
        fns[name], fns[name + " validation"] = epoch_parts(p, p.evaluate.batch_size)
    for fn in fns.values():
        time_calls(fn, 1, CPU)  # warm-up: allocations, oneDNN's kernel choice
    times = alternate(fns, n=steps, rounds=rounds, device=CPU)
    out: dict[str, Any] = {}
    for name, p in subjects.items():
        step = summarize_calls(times[name], p.train.batch_size)
        val_s = statistics.median(t for r in times[name + " validation"] for t in r)
        epoch_s = (epoch_images(p) // p.train.batch_size * step["median_s"]
                   + math.ceil(p.data.val_size / p.evaluate.batch_size) * val_s)
        out[name] = {"step_s": step["median_s"], "validation_pass_s": val_s, "epoch_s": epoch_s}
    out["step_speedup_recipe"] = paired_speedup(
        summarize_calls(times["recipe"], 1), summarize_calls(times["fp32"], 1))
    return out


def choose(params: Params, *, steps: int, rounds: int) -> tuple[dict[str, Any], str]:
    """The preset's overrides for this CPU and one line on why."""
    flags = native_bf16_cpu()
    bf16 = bool(flags)
    fp32 = preset.apply(params, preset.overrides(None))
    recipe = preset.apply(params, preset.overrides(preset.MIN_EPOCHS, bf16=bf16))
    t = epoch_seconds(fp32, recipe, steps=steps, rounds=rounds)
    epochs = preset.fit_epochs(t["fp32"]["epoch_s"], t["recipe"]["epoch_s"])
    cpu = (f"this CPU has {', '.join(flags)}" if bf16 else
           "no native bf16 on this CPU (lscpu: no avx512_bf16 or amx_bf16)")
    timed = (f"{cpu}; an epoch takes about {t['fp32']['epoch_s']:.0f} s as the fp32 preset and "
             f"{t['recipe']['epoch_s']:.0f} s as the {recipe.train.precision} recipe")
    if epochs is None:
        return preset.overrides(None), f"{timed}: the recipe fits too few epochs, fp32 it is"
    return (preset.overrides(epochs, bf16=bf16),
            f"{timed}: {epochs} {recipe.train.precision} recipe epochs fit in "
            f"{preset.MARGIN:.0%} of {preset.FP32_EPOCHS} fp32 preset ones")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=24, help="timed steps of each, and validation "
                    "passes (default: 24)")
    ap.add_argument("--rounds", type=int, default=6, help="alternating rounds they are split "
                    "into (default: 6)")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    keys, why = choose(params, steps=args.steps, rounds=args.rounds)
    print(f"cpu-preset: {why}", file=sys.stderr)
    print(exp_run_flags(keys))


if __name__ == "__main__":
    run_main(main)
