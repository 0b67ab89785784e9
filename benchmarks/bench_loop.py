"""The training loop against its bare step: `loop.train`'s images/s over an epoch's
training (progress bar, running sums, lr schedule, batch making) beside the same step
(vitlens.train.harness: the optimizer step and the weight average's update) on one ready
batch, the model as trained (dropout, drop path, token drop), on the same device in the same
precision. What the loop costs beyond the step."""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from vitlens.config import Params, parse_params
from vitlens.data.imageset import ImageSet
from vitlens.train.harness import NUM_CLASSES, augmented, harness, ready, synthetic_images, time_calls
from vitlens.train.loop import device_splits, train


def loop_params(params: Params, *, batch_size: int, steps: int, device: torch.device) -> Params:
    """Two epochs of `steps` batches on `device`, one validation batch, nothing logged or
    snapshotted, and the model's token drop constant (no decay), as the bare step runs it."""
    raw = params.to_dict()
    raw["train"].update(epochs=2, batch_size=batch_size, snapshot_images=0, compile=False,
                        device=device.type, token_drop_decay=False)
    raw["data"].update(val_size=batch_size, train_subset=0)
    raw["tracking"]["enabled"] = False
    return parse_params(raw)


def bare_step(p: Params, data: ImageSet, steps: int, device: torch.device) -> tuple[float, str]:
    """Median images/s of `steps` steps on one augmented batch of the training split, after 2
    untimed, and the precision they ran in."""
    train_split, _, norm = device_splits(p, data, device)
    h = harness(p, ready(*augmented(train_split, norm, p.train)()), device)
    time_calls(h.step, 2, device)
    return p.train.batch_size / statistics.median(time_calls(h.step, steps, device)), h.precision


def bench_loop(params: Params, batch_size: int, *, steps: int,
               device: torch.device) -> dict[str, Any]:
    """The loop's second epoch (the first pays the warm-up) against the bare step, timed
    before and after it (their mean: load that drifts meets both sides)."""
    p = loop_params(params, batch_size=batch_size, steps=steps, device=device)
    x, y = synthetic_images((steps + 1) * batch_size)
    data = ImageSet(x, y, x[:batch_size], y[:batch_size], [str(i) for i in range(NUM_CLASSES)])
    before, precision = bare_step(p, data, steps, device)
    with tempfile.TemporaryDirectory(prefix="vitlens-bench-") as d:
        history = train(p, data, checkpoint=Path(d) / "checkpoint.pt").history
    after, _ = bare_step(p, data, steps, device)
    loop, step = history[-1]["images_per_second"], (before + after) / 2
    return {"batch_size": batch_size, "steps_per_epoch": steps, "precision": precision,
            "loop_images_per_second": loop, "step_images_per_second": step,
            "step_before_after": [before, after], "ratio_loop_over_step": loop / step}
