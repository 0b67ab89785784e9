"""DVC stage `visualize`: models/model.pt + test set -> reports/figures/ (training curves,
input grid, attention overlays, rollout vs heads, mean attention distance)
(reads visualize.*, tracking.enabled)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vitlens import plots, tracking
from vitlens.attention import (
    attention_views,
    gradient_rollout_maps,
    mean_attention_distance_over,
    upsample_map,
)
from vitlens.cifar import load_arrays
from vitlens.config import VisualizeConfig, load_params
from vitlens.data import Normalizer
from vitlens.device import pick_device
from vitlens.errors import VitlensError, run_main
from vitlens.evaluation import softmax_confidence
from vitlens.io import write_csv, write_json
from vitlens.model import load_model


def select_examples(pred: np.ndarray, truth: np.ndarray, candidates: np.ndarray,
                    num: int) -> np.ndarray:
    """Half right and half wrong predictions among `candidates` (in their order), when both
    exist, so the figures show where the model fails as well as where it succeeds."""
    right = candidates[pred == truth]
    wrong = candidates[pred != truth]
    n_wrong = min(len(wrong), num // 2)
    n_right = min(len(right), num - n_wrong)
    n_wrong = min(len(wrong), num - n_right)
    return np.concatenate([right[:n_right], wrong[:n_wrong]])


def candidate_indices(cfg: VisualizeConfig, n_test: int) -> np.ndarray:
    if cfg.indices:
        bad = [i for i in cfg.indices if not 0 <= i < n_test]
        if bad:
            raise VitlensError(f"visualize.indices={bad} out of range 0-{n_test - 1}")
        return np.array(cfg.indices)
    pool = min(n_test, 20 * cfg.num_images)  # enough candidates to find wrong predictions
    return np.random.default_rng(cfg.seed).permutation(n_test)[:pool]


def run_visualize(params_path: str, model_path: Path, data_path: Path, out_dir: Path) -> None:
    params = load_params(params_path)
    cfg = params.visualize
    device = pick_device("auto")
    model, rec = load_model(model_path, device)
    norm = Normalizer(rec["mean"], rec["std"])
    data = load_arrays(data_path)
    classes = data.classes

    cand = candidate_indices(cfg, len(data.y_test))
    x_cand = torch.from_numpy(data.x_test[cand]).to(device)
    with torch.no_grad():
        pred = model(norm(x_cand)).argmax(1).cpu().numpy()
    chosen = cand if cfg.indices else select_examples(pred, data.y_test[cand], cand, cfg.num_images)
    images = data.x_test[chosen]
    x = norm(torch.from_numpy(images).to(device))
    logits, rollout, heads = attention_views(model, x)
    grad = upsample_map(gradient_rollout_maps(model, x)[1], x.shape[-1])
    pred, conf = softmax_confidence(logits.cpu())
    truth = [classes[i] for i in data.y_test[chosen]]
    pred_names = [classes[i] for i in pred]

    x_dist = torch.from_numpy(data.x_test[:cfg.distance_images]).to(device)
    dist = mean_attention_distance_over(model, [norm(b) for b in x_dist.split(128)]).cpu().numpy()

    figures = {
        "training_curves.png": plots.training_curves(rec["history"]),
        "input_grid.png": plots.image_grid(images, truth),
        "attention_overlays.png": plots.attention_overlays(
            images, truth, pred_names, conf.tolist(), rollout.cpu().numpy(),
            grad_maps=grad.cpu().numpy()),
        "rollout_vs_heads.png": plots.rollout_vs_heads(
            images, rollout.cpu().numpy(), heads.cpu().numpy(),
            [f"#{i} {t} -> {p}" for i, t, p in zip(chosen, truth, pred_names)]),
        "attention_distance.png": plots.attention_distance_plot(dist, model.patch_size),
    }
    for name, fig in figures.items():
        plots.save_figure(fig, out_dir / name)
    rows = [{"layer": l + 1, "head": h + 1, "distance_px": float(dist[l, h])}
            for l in range(dist.shape[0]) for h in range(dist.shape[1])]
    write_csv(out_dir / "attention_distance.csv", rows)
    write_json(out_dir / "attention_distance.json",
               {"images": len(x_dist), "patch_size": model.patch_size, "per_head": rows,
                "per_layer_mean": dist.mean(axis=1).tolist()})

    if params.tracking.enabled and rec["mlflow_run_id"]:
        run = tracking.open_run(rec["mlflow_run_id"])
        for name in (*figures, "attention_distance.csv", "attention_distance.json"):
            run.log_artifact(out_dir / name, "figures")
    print(f"wrote {len(figures)} figures for test images {chosen.tolist()} to {out_dir}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--data", type=Path, default=Path("data/cifar10.npz"))
    ap.add_argument("--out-dir", type=Path, default=Path("reports/figures"))
    args = ap.parse_args()
    run_visualize(args.params, args.model, args.data, args.out_dir)


if __name__ == "__main__":
    run_main(main)
