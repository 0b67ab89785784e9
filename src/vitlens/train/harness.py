"""The training step as it is timed, in one place: what `vitlens cpu-preset`, the benches and
the profiler measure. A model, its AdamW (and train.ema's average of the weights) and a
source of batches step through `step.optimizer_step` in the precision `params` resolve to on
the device (`device.use_bf16`); synthetic CIFAR-sized images feed it.

Timing that a busy machine and an asynchronous GPU cannot fool: each call ends with a device
sync, contenders run in alternating rounds (A, B, B, A, ...) so that drifting background load
hits every side alike, and results are medians.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from vitlens.config import Params, TrainConfig
from vitlens.data.normalize import Normalizer, channel_stats
from vitlens.data.split import Split
from vitlens.device import autocast, use_bf16
from vitlens.model.vit import build_model
from vitlens.train.ema import EMA
from vitlens.train.optim import Optimizer, make_optimizer
from vitlens.train.step import batch_maker, optimizer_step

NUM_CLASSES = 10
IMAGE_SIZE = 32  # pixels: CIFAR-sized images whatever the model

Batch = Callable[[], tuple[Tensor, Tensor]]  # the next (inputs, labels) on the device


def synthetic_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 32, 32) uint8 noise images and int64 labels, so no dataset is needed."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    return x, rng.integers(0, NUM_CLASSES, n, dtype=np.int64)


def synthetic_split(n: int, device: torch.device, seed: int = 0) -> tuple[Split, Normalizer]:
    """`n` synthetic images on `device` and the normaliser of their statistics."""
    x, y = synthetic_images(n, seed)
    return (Split(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)),
            Normalizer(*channel_stats(x)))


def augmented(split: Split, norm: Normalizer, t: TrainConfig, *, seed: int = 0,
              order: Iterator[Tensor] | None = None) -> Batch:
    """Fresh batches as loop.train makes them (crop, flip, maybe TrivialAugment, normalise, cutout, mix) of the
    indices `order` yields in turn, or else of the first train.batch_size images each time."""
    make = batch_maker(split, norm, t, torch.Generator(split.x.device).manual_seed(seed),
                       classes=NUM_CLASSES)
    first = torch.arange(t.batch_size, device=split.x.device)
    return lambda: make(next(order) if order is not None else first)


def ready(x: Tensor, y: Tensor) -> Batch:
    """The same batch every step: the step alone, no batch making."""
    return lambda: (x, y)


@dataclass
class Harness:
    """A model stepping as loop.train steps it: `fwd` (the model, maybe compiled) forward,
    AdamW on `model`, then the weight average's update when train.ema is on."""
    model: nn.Module
    fwd: nn.Module
    opt: Optimizer
    ema: EMA | None
    batch: Batch
    train: TrainConfig
    device: torch.device
    bf16: bool  # train.precision as it resolved on `device`

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def step(self) -> tuple[Tensor, Tensor, Tensor]:
        """One optimizer step on the next batch: (loss, logits, labels), left on the device."""
        if not self.model.training:  # a validation pass ran on it (loop.train: per epoch)
            self.model.train()
        x, y = self.batch()
        loss, logits = optimizer_step(self.fwd, self.model, self.opt, x, y, self.train,
                                      self.device, bf16=self.bf16)
        if self.ema is not None:
            self.ema.update(self.model)
        return loss, logits, y


def harness(params: Params, batch: Batch, device: torch.device, *, model: nn.Module | None = None,
            compile_mode: str | None = None, num_classes: int = NUM_CLASSES,
            seed: int = 0) -> Harness:
    """The step of `params` on `device`: `model` (default: a fresh `params.model`, seeded),
    torch.compile'd in `compile_mode` unless None, fed by `batch`."""
    torch.manual_seed(seed)
    m = (model if model is not None else build_model(params.model, num_classes)).to(device)
    fwd = m if compile_mode is None else cast(nn.Module, torch.compile(m, mode=compile_mode))
    t = params.train
    return Harness(m.train(), fwd, make_optimizer(m, t, device), EMA(m, t.ema) if t.ema else None,
                   batch, t, device, use_bf16(t.precision, device))


def validation_pass(model: nn.Module, x: Tensor, device: torch.device, *,
                    bf16: bool) -> Callable[[], None]:
    """One eval-mode forward pass of the normalised images `x`, in the precision that trains
    (loop.train validates so), the logits brought to the host; the model is left in the
    mode it was in."""
    @torch.no_grad()
    def run() -> None:
        was_training = model.training
        model.eval()
        with autocast(device, bf16):
            model(x).float().cpu()
        model.train(was_training)
    return run


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
