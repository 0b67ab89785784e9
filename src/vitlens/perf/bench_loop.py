"""The training loop against its bare step: `training.train`'s images/s over an epoch (progress
bar, running sums, lr schedule, batch making, checkpoint) beside the same optimizer step on one
ready batch, the model as trained (dropout, drop path). What the loop costs beyond the step."""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from vitlens.config import Params, parse_params
from vitlens.data.imageset import ImageSet
from vitlens.device import use_bf16
from vitlens.model.vit import build_model
from vitlens.perf.bench_data import NUM_CLASSES, synthetic_images
from vitlens.perf.timing import time_calls
from vitlens.train.loop import device_splits, train
from vitlens.train.step import batch_maker, make_optimizer, optimizer_step


def loop_params(params: Params, *, batch_size: int, steps: int) -> Params:
    """Two epochs of `steps` batches, one validation batch, nothing logged or snapshotted."""
    raw = params.to_dict()
    raw["train"].update(epochs=2, batch_size=batch_size, snapshot_images=0, compile=False)
    raw["data"].update(val_size=batch_size, train_subset=0)
    raw["tracking"]["enabled"] = False
    return parse_params(raw)


def bare_step_images_per_second(p: Params, data: ImageSet, steps: int,
                                device: torch.device) -> float:
    """Median images/s of `steps` optimizer steps on one augmented batch, after 2 untimed."""
    torch.manual_seed(0)
    model = build_model(p.model, NUM_CLASSES).to(device)
    opt = make_optimizer(model, p.train, device)
    train_split, _, norm = device_splits(p, data, device)
    make = batch_maker(train_split, norm, p.train, torch.Generator(device).manual_seed(0))
    x, y = make(torch.arange(p.train.batch_size, device=device))

    def step() -> None:
        model.train()
        optimizer_step(model, model, opt, x, y, p.train, device,
                       bf16=use_bf16(p.train.precision, device))
    time_calls(step, 2, device)
    return p.train.batch_size / statistics.median(time_calls(step, steps, device))


def bench_loop(params: Params, batch_size: int, *, steps: int,
               device: torch.device) -> dict[str, Any]:
    """The loop's second epoch (the first pays the warm-up) against the bare step, timed
    before and after it (their mean: load that drifts meets both sides)."""
    p = loop_params(params, batch_size=batch_size, steps=steps)
    x, y = synthetic_images((steps + 1) * batch_size)
    data = ImageSet(x, y, x[:batch_size], y[:batch_size], [str(i) for i in range(NUM_CLASSES)])
    before = bare_step_images_per_second(p, data, steps, device)
    with tempfile.TemporaryDirectory(prefix="vitlens-bench-") as d:
        history = train(p, data, checkpoint=Path(d) / "checkpoint.pt").history
    after = bare_step_images_per_second(p, data, steps, device)
    loop, step = history[-1]["images_per_second"], (before + after) / 2
    return {"batch_size": batch_size, "steps_per_epoch": steps, "loop_images_per_second": loop,
            "step_images_per_second": step, "step_before_after": [before, after],
            "ratio_loop_over_step": loop / step}
