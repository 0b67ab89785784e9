"""The publish stage's work: what the training run shows beyond its numbers, logged after
train so that drawing, serving or registry edits never re-run a training: the per-epoch
attention strips (the MLflow UI's image slider), the model file, and the served pixel model,
registered."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vitlens.config import load_params
from vitlens.data.imageset import load_arrays
from vitlens.explain.attention import upsample_map
from vitlens.io import write_json
from vitlens.model.pixels import to_pixels
from vitlens.model.trained import load_trained
from vitlens.plots.common import overlay_strip
from vitlens.tracking.registry import log_model

IMAGE_KEY = "attention/rollout"  # the MLflow image key: one image per epoch, a step slider


def snapshot_strips(snapshots: dict[str, Any] | None) -> Iterator[tuple[int, np.ndarray]]:
    """(epoch, uint8 strip) of each epoch the train stage kept maps of: the snapshot images
    with that epoch's rollout blended on top, side by side."""
    if not snapshots or not snapshots.get("epochs"):
        return
    images = np.asarray(snapshots["images"])  # uint8 (n, C, S, S)
    for epoch, rollout in zip(snapshots["epochs"], snapshots["rollout"]):
        yield int(epoch), overlay_strip(images, upsample_map(rollout.float(), images.shape[-1]).numpy())


def registered_model_name(template: str, dataset: str) -> str:
    """tracking.registered_model with `{data}` the dataset's name: vitlens-{data} -> vitlens-cifar10."""
    return template.replace("{data}", dataset)


def run_publish(params_path: str | Path, model_path: Path, data_path: Path, out: Path) -> dict:
    """Log the strips and the served model into the model's training run; write `out` (the
    run id and the URI to load the served model by, null when not logged)."""
    params = load_params(params_path)
    trained = load_trained(model_path, "cpu")  # the served model is exported on the CPU
    run = trained.run(params.tracking.enabled)
    published: dict[str, Any] = {"run_id": trained.run_id or None, "model_uri": None}
    if run is not None:
        # The model file itself, for what reads the train stage's record (`vitlens compare
        # RUN_ID`): the served model below lacks the attention path and the history.
        run.log_artifact(model_path, "models")
        for epoch, strip in snapshot_strips(trained.record.get("snapshots")):
            run.log_image(strip, key=IMAGE_KEY, step=epoch)
        if params.tracking.log_model:
            data = load_arrays(data_path)
            # Two real test images: a batch of one would fix the exported batch size at 1.
            published["model_uri"] = log_model(run, trained.pixel_classifier(), to_pixels(data.x_test[:2]),
                                               classes=trained.classes,
                                               registered_model=registered_model_name(
                                                   params.tracking.registered_model, data.name))
    write_json(out, published)
    if run is None:
        print("tracking is off or the model was trained untracked: nothing to publish")
    else:
        model = f", model {published['model_uri']}" if published["model_uri"] else ""
        print(f"published into MLflow run {run.id}{model} -> {out}")
    return published
