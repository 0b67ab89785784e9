"""DVC stage `faithfulness`: models/model.pt + test set -> reports/faithfulness.json (deletion
and insertion AUC per explanation method, with bootstrap intervals), the mean curves (DVC plot
data and PNG) and the methods side by side (reads faithfulness.*, tracking.enabled)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from vitlens import faithfulness_plots, plots, tracking
from vitlens.attention import upsample_map
from vitlens.cifar import Cifar10, load_arrays
from vitlens.config import FaithfulnessConfig, load_params
from vitlens.data import Normalizer
from vitlens.device import pick_device
from vitlens.errors import VitlensError, run_main
from vitlens.explain import explanation_maps
from vitlens.faithfulness import KINDS, Curves, auc, faithfulness_curves, step_counts, summarise
from vitlens.io import write_csv, write_json
from vitlens.model import load_model


def choose_images(cfg: FaithfulnessConfig, n_test: int) -> np.ndarray:
    """faithfulness.images test indices, a seeded random choice (not the first N: the test
    set's order is not guaranteed to be shuffled)."""
    if cfg.images > n_test:
        raise VitlensError(f"faithfulness.images={cfg.images} must be <= the {n_test} test images")
    return np.random.default_rng(cfg.seed).permutation(n_test)[:cfg.images]


def curve_rows(fraction: np.ndarray, means: dict[str, dict[str, np.ndarray]]) -> list[dict[str, float]]:
    """One row per step, one column per kind and method: the wide shape `dvc plots` draws."""
    cols = {f"{k}_{m}": curve for k, by_method in means.items() for m, curve in by_method.items()}
    return [{"fraction": float(f), **{c: float(v[t]) for c, v in cols.items()}}
            for t, f in enumerate(fraction)]


def figures(data: Cifar10, chosen: np.ndarray, pred: Tensor, maps: dict[str, Tensor],
            curves: dict[str, Curves], means: dict[str, dict[str, np.ndarray]], fraction: np.ndarray,
            summary: dict[str, dict[str, float]], cfg: FaithfulnessConfig) -> dict[str, Figure]:
    """The mean curves, and the first `show_images` chosen images with every method's map."""
    show, classes = slice(0, cfg.show_images), data.classes
    images = data.x_test[chosen[show]]
    titles = [f"test #{i}: {classes[t]}\npredicted {classes[p]}"
              for i, t, p in zip(chosen[show], data.y_test[chosen[show]], pred[show].tolist())]
    up = {m: upsample_map(v[show], images.shape[-1]).numpy() for m, v in maps.items()}
    scores = {m: torch.stack([auc(c.deletion[show]), auc(c.insertion[show])], dim=1).numpy()
              for m, c in curves.items()}
    return {"curves.png": faithfulness_plots.curves_figure(fraction, means, summary, images=len(chosen),
                                                           confidence=cfg.confidence),
            "methods.png": faithfulness_plots.methods_figure(images, up, titles, scores)}


def run_faithfulness(params_path: str, model_path: Path, data_path: Path, out_dir: Path,
                     metrics_path: Path) -> dict:
    params = load_params(params_path)
    cfg = params.faithfulness
    device = pick_device("auto")
    model, rec = load_model(model_path, device)
    data = load_arrays(data_path)
    chosen = choose_images(cfg, len(data.y_test))
    patches = model.grid**2
    if cfg.steps > patches:
        raise VitlensError(f"faithfulness.steps={cfg.steps} must be <= the model's {patches} patches")
    x = Normalizer(rec["mean"], rec["std"])(torch.from_numpy(data.x_test[chosen]).to(device))

    start = time.perf_counter()
    maps = explanation_maps(model, x, cfg.methods, seed=cfg.seed, batch_size=cfg.batch_size)
    pred, curves = faithfulness_curves(model, x, maps, steps=cfg.steps, blur_kernel=cfg.blur_kernel,
                                       blur_sigma=cfg.blur_sigma, batch_size=cfg.batch_size,
                                       progress=True)
    seconds = time.perf_counter() - start
    summary = summarise(curves, samples=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed)
    metrics = {"images": len(chosen), **summary}

    fraction = (step_counts(patches, cfg.steps).double() / patches).numpy()
    means = {k: {m: getattr(c, k).mean(dim=0).numpy() for m, c in curves.items()} for k in KINDS}
    write_json(metrics_path, metrics)
    write_csv(out_dir / "curves.csv", curve_rows(fraction, means))
    figs = figures(data, chosen, pred, maps, curves, means, fraction, summary, cfg)
    for name, fig in figs.items():
        plots.save_figure(fig, out_dir / name)

    if params.tracking.enabled and rec["mlflow_run_id"]:
        run = tracking.open_run(rec["mlflow_run_id"])
        run.log_metrics({f"faithfulness/{m}/{k}": v for m, row in summary.items() for k, v in row.items()}
                        | {"faithfulness/seconds": seconds})
        for path in (*(out_dir / name for name in figs), out_dir / "curves.csv", metrics_path):
            run.log_artifact(path, "faithfulness")
    print(f"{len(chosen)} images, {len(cfg.methods)} methods, {cfg.steps} steps in {seconds:.1f}s "
          f"on {device.type} -> {metrics_path}")
    for m, s in summary.items():
        print(f"  {m:<13} deletion {s['deletion_auc']:.3f} [{s['deletion_low']:.3f}, "
              f"{s['deletion_high']:.3f}]  insertion {s['insertion_auc']:.3f} "
              f"[{s['insertion_low']:.3f}, {s['insertion_high']:.3f}]")
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--data", type=Path, default=Path("data/cifar10.npz"))
    ap.add_argument("--out-dir", type=Path, default=Path("reports/faithfulness"))
    ap.add_argument("--metrics", type=Path, default=Path("reports/faithfulness.json"))
    args = ap.parse_args()
    run_faithfulness(args.params, args.model, args.data, args.out_dir, args.metrics)


if __name__ == "__main__":
    run_main(main)
