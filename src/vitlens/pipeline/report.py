"""The report stage's work: the offline attention explorer of a trained model, one
self-contained HTML file (vitlens.report), logged into the training run."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from vitlens.config import ConfigError, ReportConfig, load_params, parse_params
from vitlens.data.choice import POOL_PER_IMAGE, right_and_wrong, seeded_sample
from vitlens.data.imageset import load_arrays
from vitlens.errors import first_line
from vitlens.model.trained import Trained, load_trained
from vitlens.report import data as explorer
from vitlens.report.page import write_explorer


def predictions(trained: Trained, x: np.ndarray, batch_size: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for xb in torch.from_numpy(x).split(batch_size):
            out.append(trained.vit(trained.norm(xb.to(trained.device))).argmax(1).cpu())
    return torch.cat(out).numpy()


def default_params(root: Path) -> dict[str, Any] | None:
    """The committed params.yaml (the defaults an experiment's -S changes depart from), or None
    outside a git checkout or when it does not parse (a commit from before a key was added:
    the page then skips the diff instead of the stage failing)."""
    try:
        text = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout
        return parse_params(yaml.safe_load(text)).to_dict()
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None  # not a git checkout, or no params.yaml committed
    except (yaml.YAMLError, ConfigError) as e:
        print(f"no params diff: the committed params.yaml does not parse ({first_line(e)})")
        return None


def read_json(path: Path | None) -> Any:
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def selected(chosen: list[int], count: int) -> list[int]:
    """0-based indices of report.layers / report.heads (1-based; [] = all)."""
    return [i - 1 for i in chosen] if chosen else list(range(count))


def run_report(params_path: str | Path, model_path: Path, data_path: Path, out: Path, *,
               metrics: Path | None = None, faithfulness: Path | None = None,
               distance: Path | None = None) -> dict[str, Any]:
    """Write the explorer of `model_path` to `out` and log it into the training run."""
    t0 = time.perf_counter()
    params = load_params(params_path)
    cfg: ReportConfig = params.report
    trained = load_trained(model_path)
    data = load_arrays(data_path)
    n_test, k = len(data.y_test), len(data.classes)
    pool = seeded_sample(n_test, min(n_test, POOL_PER_IMAGE * cfg.images), cfg.seed)
    pred = predictions(trained, data.x_test[pool], cfg.batch_size)
    # Class-balanced while every class gets two slots (one right, one wrong); past that a
    # per-class quota would leave classes out and keep almost no mistakes: half and half.
    picked = right_and_wrong(pred, data.y_test[pool], cfg.images, classes=k if 2 * k <= cfg.images else None)
    chosen = pool[picked]
    layers = selected(cfg.layers, len(trained.vit.blocks))
    heads = selected(cfg.heads, trained.params["model"]["heads"])
    means_idx = seeded_sample(n_test, min(n_test, cfg.class_images), cfg.seed, draw=1)
    doc = explorer.document(
        trained, title=f"vitlens run {trained.run_id or '(untracked)'}", kind="run",
        gallery=explorer.gallery(trained, data.x_test[chosen], [f"test #{i}" for i in chosen],
                                 [int(t) for t in data.y_test[chosen]], layers=layers, heads=heads,
                                 batch_size=cfg.batch_size),
        class_means=explorer.class_means(trained, data.x_test[means_idx],
                                         [int(t) for t in data.y_test[means_idx]],
                                         batch_size=cfg.batch_size),
        training=explorer.training(trained.record.get("snapshots")),
        facts=explorer.facts(trained, defaults=default_params(Path.cwd()),
                             metrics=read_json(metrics), faithfulness=read_json(faithfulness),
                             distance=read_json(distance),
                             position_warn=params.faithfulness.position_warn))
    write_explorer(out, doc)
    run = trained.run(params.tracking.enabled)
    if run is not None:
        run.log_artifact(out, "explorer")
    seconds = time.perf_counter() - t0
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB): {len(chosen)} test images "
          f"({int((pred[picked] != data.y_test[chosen]).sum())} mistakes), "
          f"class means over {len(means_idx)} in {seconds:.1f}s")
    return {"images": len(chosen), "bytes": out.stat().st_size, "seconds": seconds}
