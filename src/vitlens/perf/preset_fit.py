"""`vitlens cpu-preset`: the CPU preset's `dvc exp run` flags for this CPU (`make repro-cpu`
runs it). Without native bf16, the fp32 preset. With it, one epoch of the fp32 preset and one
of the bf16 recipe are timed side by side here (train steps in alternating rounds, and a
validation pass each), and the recipe gets the epochs that fit in the fp32 preset's 20.
The flags go to stdout, the measurement and the choice to stderr."""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch

from vitlens.config import Params, load_params
from vitlens.data.normalize import Normalizer, channel_stats
from vitlens.data.split import Split
from vitlens.device import autocast, native_bf16_cpu
from vitlens.errors import run_main
from vitlens.model.vit import build_model
from vitlens.perf.bench_data import NUM_CLASSES, synthetic_images
from vitlens.perf.timing import alternate, paired_speedup, summarize_calls, time_calls
from vitlens.train import preset
from vitlens.train.ema import EMA
from vitlens.train.loop import VAL_BATCH, epoch_images
from vitlens.train.step import batch_maker, make_optimizer, optimizer_step

CPU = torch.device("cpu")


def train_step(p: Params, *, bf16: bool) -> Callable[[], None]:
    """One step as training.train takes it: an augmented batch made from uint8 images, the
    optimizer step, the weight average's update (train.ema)."""
    torch.manual_seed(0)
    model = build_model(p.model, NUM_CLASSES)
    opt = make_optimizer(model, p.train, CPU)
    ema = EMA(model, p.train.ema) if p.train.ema else None
    x8, y8 = synthetic_images(p.train.batch_size)
    make = batch_maker(Split(torch.from_numpy(x8), torch.from_numpy(y8)),
                       Normalizer(*channel_stats(x8)), p.train, torch.Generator().manual_seed(0))
    idx = torch.arange(p.train.batch_size)

    def step() -> None:
        model.train()
        optimizer_step(model, model, opt, *make(idx), p.train, CPU, bf16=bf16)
        if ema is not None:
            ema.update(model)
    return step


def validation_pass(p: Params, *, bf16: bool, batch: int) -> Callable[[], None]:
    """One forward pass of `batch` images through a fresh `p` model in eval mode, in the
    precision that trains (training.validate's)."""
    torch.manual_seed(0)
    model = build_model(p.model, NUM_CLASSES).eval()
    x = torch.from_numpy(synthetic_images(batch)[0]).float().div(255) - 0.5  # (B, 3, H, W)

    @torch.no_grad()
    def run() -> None:
        with autocast(CPU, bf16):
            model(x).float()
    return run


def epoch_seconds(fp32: Params, bf16: Params, *, steps: int, rounds: int,
                  val_batch: int = VAL_BATCH) -> dict[str, Any]:
    """Seconds an epoch of each preset (train steps at its batch size plus its validation
    passes), from median step and pass times in alternating rounds; bf16's paired speedup."""
    subjects = {"fp32": (fp32, False), "bf16": (bf16, True)}
    fns: dict[str, Callable[[], None]] = {}
    for name, (p, b16) in subjects.items():
        fns[name] = train_step(p, bf16=b16)
        fns[name + " validation"] = validation_pass(p, bf16=b16, batch=val_batch)
    for fn in fns.values():
        time_calls(fn, 1, CPU)  # warm-up: allocations, oneDNN's kernel choice
    times = alternate(fns, n=steps, rounds=rounds, device=CPU)
    out: dict[str, Any] = {}
    for name, (p, _) in subjects.items():
        step = summarize_calls(times[name], p.train.batch_size)
        val_s = statistics.median(t for r in times[name + " validation"] for t in r)
        epoch_s = (epoch_images(p) // p.train.batch_size * step["median_s"]
                   + math.ceil(p.data.val_size / val_batch) * val_s)
        out[name] = {"step_s": step["median_s"], "validation_pass_s": val_s, "epoch_s": epoch_s}
    out["step_speedup_bf16"] = paired_speedup(
        summarize_calls(times["bf16"], 1), summarize_calls(times["fp32"], 1))
    return out


def choose(params: Params, *, steps: int, rounds: int) -> tuple[dict[str, Any], str]:
    """The preset's overrides for this CPU and one line on why."""
    flags = native_bf16_cpu()
    if not flags:
        return preset.overrides(None), ("no native bf16 on this CPU (lscpu: no avx512_bf16 or "
                                        f"amx_bf16): {preset.FP32_EPOCHS} fp32 epochs")
    fp32 = preset.apply(params, preset.overrides(None))
    bf16 = preset.apply(params, preset.overrides(preset.MIN_EPOCHS))
    t = epoch_seconds(fp32, bf16, steps=steps, rounds=rounds)
    epochs = preset.fit_epochs(t["fp32"]["epoch_s"], t["bf16"]["epoch_s"])
    timed = (f"this CPU has {', '.join(flags)}; an epoch takes about {t['fp32']['epoch_s']:.0f} s "
             f"as the fp32 preset and {t['bf16']['epoch_s']:.0f} s as the bf16 recipe")
    if epochs is None:
        return preset.overrides(None), f"{timed}: the recipe fits too few epochs, fp32 it is"
    return preset.overrides(epochs), (f"{timed}: {epochs} bf16 epochs fit in "
                                      f"{preset.MARGIN:.0%} of {preset.FP32_EPOCHS} fp32 ones")


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
    print(preset.cli_flags(keys))


if __name__ == "__main__":
    run_main(main)
