"""The faithfulness stage's work: deletion and insertion AUC per explanation method on a
seeded choice of test images, with bootstrap intervals, and each method's position bias on
the same images (`vitlens.explain.position`); the mean curves (DVC plot data and PNG) and the
methods side by side, a map with a high position bias flagged; all logged into the training run."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from vitlens.config import FaithfulnessConfig, load_params
from vitlens.data.choice import seeded_sample
from vitlens.data.imageset import ImageSet, load_arrays
from vitlens.errors import VitlensError
from vitlens.explain.attention import upsample_map
from vitlens.explain.faithfulness import KINDS, Curves, auc, faithfulness_curves, step_counts, summarize_curves
from vitlens.explain.maps import explanation_maps
from vitlens.explain.position import PositionBias, position_biases, view_maps
from vitlens.io import write_csv, write_json
from vitlens.model.trained import load_trained
from vitlens.plots import faithfulness as faithfulness_plots
from vitlens.plots.common import save_figure


def choose_images(cfg: FaithfulnessConfig, n_test: int) -> np.ndarray:
    """faithfulness.images test indices, a seeded random choice (`seeded_sample`)."""
    if cfg.images > n_test:
        raise VitlensError(f"faithfulness.images={cfg.images} must be <= the {n_test} test images")
    return seeded_sample(n_test, cfg.images, cfg.seed)


def curve_rows(fraction: np.ndarray, means: dict[str, dict[str, np.ndarray]]) -> list[dict[str, float]]:
    """One row per step, one column per kind and method: the wide shape `dvc plots` draws."""
    cols = {f"{k}_{m}": curve for k, by_method in means.items() for m, curve in by_method.items()}
    return [{"fraction": float(f), **{c: float(v[t]) for c, v in cols.items()}}
            for t, f in enumerate(fraction)]


def figures(data: ImageSet, chosen: np.ndarray, pred: Tensor, maps: dict[str, Tensor],
            curves: dict[str, Curves], means: dict[str, dict[str, np.ndarray]], fraction: np.ndarray,
            summary: dict[str, dict[str, float]], position: dict[str, PositionBias],
            cfg: FaithfulnessConfig) -> dict[str, Figure]:
    """The mean curves, and the first `show_images` chosen images with every method's map,
    most faithful first (this run's deletion AUC; random last, the floor), a map whose
    position bias reaches `position_warn` flagged."""
    show, classes = slice(0, cfg.show_images), data.classes
    images = data.x_test[chosen[show]]
    titles = [f"test #{i}: {classes[t]}\npredicted {classes[p]}"
              for i, t, p in zip(chosen[show], data.y_test[chosen[show]], pred[show].tolist())]
    order = sorted(maps, key=lambda m: (m == "random", summary[m]["deletion_auc"]))
    up = {m: upsample_map(maps[m][show], images.shape[-1]).numpy() for m in order}
    scores = {m: torch.stack([auc(c.deletion[show]), auc(c.insertion[show])], dim=1).numpy()
              for m, c in curves.items()}
    flags = {m: f"position bias {p.score:.2f}" for m, p in position.items()
             if p.score >= cfg.position_warn}
    return {"curves.png": faithfulness_plots.curves_figure(fraction, means, summary, images=len(chosen),
                                                           confidence=cfg.confidence),
            "methods.png": faithfulness_plots.methods_figure(
                images, up, titles, scores, flags=flags,
                title="Explanation maps, most faithful first (this run's deletion AUC)")}


def run_faithfulness(params_path: str | Path, model_path: Path, data_path: Path, out_dir: Path,
                     metrics_path: Path) -> dict:
    params = load_params(params_path)
    cfg = params.faithfulness
    trained = load_trained(model_path)
    model, device = trained.vit, trained.device
    data = load_arrays(data_path)
    chosen = choose_images(cfg, len(data.y_test))
    patches = model.grid**2
    if cfg.steps > patches:
        raise VitlensError(f"faithfulness.steps={cfg.steps} must be <= the model's {patches} patches")
    x = trained.norm(torch.from_numpy(data.x_test[chosen]).to(device))

    start = time.perf_counter()
    maps = explanation_maps(model, x, cfg.methods, seed=cfg.seed, batch_size=cfg.batch_size)
    pred, curves = faithfulness_curves(model, x, maps, steps=cfg.steps, blur_kernel=cfg.blur_kernel,
                                       blur_sigma=cfg.blur_sigma, batch_size=cfg.batch_size,
                                       bf16=trained.bf16, progress=True)
    seconds = time.perf_counter() - start
    # Two flips of every image and one blank image: three more map passes, batched alike.
    views = view_maps(model, x, cfg.methods, seed=cfg.seed, batch_size=cfg.batch_size)
    position = position_biases(maps, views)
    position_seconds = time.perf_counter() - start - seconds
    summary = summarize_curves(curves, samples=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed)
    metrics = {"images": len(chosen),
               **{m: row | position[m].row(cfg.position_top) for m, row in summary.items()}}

    fraction = (step_counts(patches, cfg.steps).double() / patches).numpy()
    means = {k: {m: getattr(c, k).mean(dim=0).numpy() for m, c in curves.items()} for k in KINDS}
    write_json(metrics_path, metrics)
    write_csv(out_dir / "curves.csv", curve_rows(fraction, means))
    figs = figures(data, chosen, pred, maps, curves, means, fraction, summary, position, cfg)
    for name, fig in figs.items():
        save_figure(fig, out_dir / name)

    run = trained.run(params.tracking.enabled)
    if run is not None:
        scalars = {m: {k: v for k, v in row.items() if isinstance(v, float)} for m, row in metrics.items()
                   if isinstance(row, dict)}
        run.log_metrics({f"faithfulness/{m}/{k}": v for m, row in scalars.items() for k, v in row.items()}
                        | {"faithfulness/seconds": seconds, "faithfulness/position_seconds": position_seconds})
        for path in (*(out_dir / name for name in figs), out_dir / "curves.csv", metrics_path):
            run.log_artifact(path, "faithfulness")
    print(f"{len(chosen)} images, {len(cfg.methods)} methods, {cfg.steps} steps in {seconds:.1f}s "
          f"+ {position_seconds:.1f}s for the position bias on {device.type} -> {metrics_path}")
    for m, s in summary.items():
        p = position[m]
        print(f"  {m:<13} deletion {s['deletion_auc']:.3f} [{s['deletion_low']:.3f}, "
              f"{s['deletion_high']:.3f}]  insertion {s['insertion_auc']:.3f} "
              f"[{s['insertion_low']:.3f}, {s['insertion_high']:.3f}]  position bias {p.score:.3f} "
              f"(flip {p.flip:.2f}, top {p.top:.2f}, blank {p.blank:.2f})")
    return metrics
