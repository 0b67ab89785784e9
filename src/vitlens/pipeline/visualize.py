"""The visualize stage's work: a trained model and the test set -> the figures (training
curves, input grid, attention overlays, rollout vs heads, mean attention distance)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vitlens.config import VisualizeConfig, load_params
from vitlens.data.choice import POOL_PER_IMAGE, right_and_wrong, seeded_sample
from vitlens.data.imageset import load_arrays
from vitlens.errors import VitlensError
from vitlens.explain.attention import upsample_map
from vitlens.explain.maps import compute_maps, mean_attention_distance_over
from vitlens.io import write_csv, write_json
from vitlens.model.trained import Trained, load_trained
from vitlens.plots import figures
from vitlens.plots.common import save_figure
from vitlens.train.evaluation import softmax_confidence

DISTANCE_BATCH = 128  # images per pass of the mean attention distance (a memory bound)


def select_examples(pred: np.ndarray, truth: np.ndarray, candidates: np.ndarray,
                    num: int) -> np.ndarray:
    """`num` of `candidates`, half right and half wrong predictions when both exist
    (`right_and_wrong`, no class balance: a few figure slots over ten classes would leave no
    room for a mistake), the right ones first, as the figures show them."""
    pos = right_and_wrong(pred, truth, num)
    return candidates[pos[np.argsort(pred[pos] != truth[pos], kind="stable")]]


def candidate_indices(cfg: VisualizeConfig, n_test: int) -> np.ndarray:
    """visualize.indices as given (checked against the test set), else a seeded random pool."""
    if cfg.indices:
        bad = [i for i in cfg.indices if not 0 <= i < n_test]
        if bad:
            raise VitlensError(f"visualize.indices={bad} out of range 0-{n_test - 1}")
        return np.array(cfg.indices)
    return seeded_sample(n_test, min(n_test, POOL_PER_IMAGE * cfg.num_images), cfg.seed)


def choose_images(trained: Trained, x_test: np.ndarray, y_test: np.ndarray,
                  cfg: VisualizeConfig) -> np.ndarray:
    """The test indices drawn: visualize.indices, else half right and half wrong of a pool."""
    cand = candidate_indices(cfg, len(y_test))
    if cfg.indices:
        return cand
    with torch.no_grad():
        x = trained.norm(torch.from_numpy(x_test[cand]).to(trained.device))
        pred = trained.vit(x).argmax(1).cpu().numpy()
    return select_examples(pred, y_test[cand], cand, cfg.num_images)


def distance_rows(dist: np.ndarray) -> list[dict[str, float]]:
    return [{"layer": l + 1, "head": h + 1, "distance_px": float(dist[l, h])}
            for l in range(dist.shape[0]) for h in range(dist.shape[1])]


def run_visualize(params_path: str | Path, model_path: Path, data_path: Path, out_dir: Path) -> None:
    """Draw every figure of `model_path` into `out_dir` and log them into the training run."""
    params = load_params(params_path)
    cfg = params.visualize
    trained = load_trained(model_path)
    model, norm, classes = trained.vit, trained.norm, trained.classes
    data = load_arrays(data_path)

    chosen = choose_images(trained, data.x_test, data.y_test, cfg)
    images = data.x_test[chosen]
    maps = compute_maps(model, norm(torch.from_numpy(images).to(trained.device)))
    size = images.shape[-1]
    pred, conf = softmax_confidence(maps.logits.cpu())
    truth = [classes[i] for i in data.y_test[chosen]]
    pred_names = [classes[i] for i in pred]
    rollout = upsample_map(maps.rollout, size).cpu().numpy()

    x_dist = torch.from_numpy(data.x_test[:cfg.distance_images]).to(trained.device)
    dist = mean_attention_distance_over(
        model, [norm(b) for b in x_dist.split(DISTANCE_BATCH)]).cpu().numpy()

    figs = {
        "training_curves.png": figures.training_curves(trained.history),
        "input_grid.png": figures.image_grid(images, truth),
        "attention_overlays.png": figures.attention_overlays(
            images, truth, pred_names, conf.tolist(), rollout,
            grad_maps=upsample_map(maps.by_name("grad_rollout"), size).cpu().numpy()),
        "rollout_vs_heads.png": figures.rollout_vs_heads(
            images, rollout, upsample_map(maps.heads, size).cpu().numpy(),
            [f"#{i} {t} -> {p}" for i, t, p in zip(chosen, truth, pred_names)],
            readout=model.readout),
        "attention_distance.png": figures.attention_distance_plot(dist, model.patch_size),
    }
    for name, fig in figs.items():
        save_figure(fig, out_dir / name)
    rows = distance_rows(dist)
    write_csv(out_dir / "attention_distance.csv", rows)
    write_json(out_dir / "attention_distance.json",
               {"images": len(x_dist), "patch_size": model.patch_size, "per_head": rows,
                "per_layer_mean": dist.mean(axis=1).tolist()})

    run = trained.run(params.tracking.enabled)
    if run is not None:
        for name in (*figs, "attention_distance.csv", "attention_distance.json"):
            run.log_artifact(out_dir / name, "figures")
    print(f"wrote {len(figs)} figures for test images {chosen.tolist()} to {out_dir}")
