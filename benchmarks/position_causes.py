"""Why does the CPU recipe's rollout point at a row? Train the recipe with one candidate cause
changed at a time, same seed and epochs, and read each map's position bias after every epoch
and the deletion AUCs at the end, all on the same validation images.

    python -m benchmarks.position_causes --data data/dataset.npz [--epochs 8] [--seed 0]
        [--images 300] [--only baseline,registers4] [--out reports/position_causes.jsonl]

Candidates (`CANDIDATES`): the recipe as `vitlens cpu-preset` runs it (bf16), and the recipe
without the random crop's zero padding, with fixed sin-cos positions, without token drop,
without the weights' moving average, with 4 heads instead of 2, with 4 registers, and with
the crop's padding mirrored instead of black. One JSON
line per candidate is appended to --out as it finishes, so a stopped run keeps what it has.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_report import cpu_model
from vitlens.config import load_params
from vitlens.data.choice import seeded_sample
from vitlens.data.imageset import load_arrays
from vitlens.data.normalize import Normalizer
from vitlens.explain.faithfulness import auc, faithfulness_curves
from vitlens.explain.maps import explanation_maps
from vitlens.explain.position import position_biases, view_maps
from vitlens.model.vit import ViT
from vitlens.train import preset
from vitlens.train.loop import train
from vitlens.train.plan import plan_run

CANDIDATES: dict[str, dict[str, Any]] = {
    "baseline": {},
    "no_crop_padding": {"train.crop_padding": 0},
    "sincos_positions": {"model.pos_embed": "sincos"},
    "no_token_drop": {"model.token_drop": 0.0},
    "no_ema": {"train.ema": 0.0},
    "heads4": {"model.heads": 4},
    "registers4": {"model.registers": 4},
    "reflect_crop": {"train.crop_fill": "reflect"},
}
METHODS = ["rollout", "grad_rollout", "last_layer", "random"]


class BiasEachEpoch:
    """The epoch hook: every map's position bias on fixed validation images x (uint8)."""

    def __init__(self, x: torch.Tensor, batch_size: int):
        self.x, self.batch_size = x, batch_size
        self.rows: list[dict[str, Any]] = []

    def scores(self, model: ViT, norm: Normalizer) -> dict[str, dict[str, float]]:
        x = norm(self.x)
        maps = explanation_maps(model, x, METHODS, seed=0, batch_size=self.batch_size)
        biases = position_biases(maps, view_maps(model, x, METHODS, seed=0, batch_size=self.batch_size))
        return {m: {"bias": p.score, "top": p.top, "flip": p.flip, "blank": p.blank,
                    "bottom_row": float(p.share[-1].sum()), "top_row": float(p.share[0].sum())}
                for m, p in biases.items()}

    def after_epoch(self, epoch: int, model: ViT, norm: Normalizer) -> None:
        was = model.training
        self.rows.append({"epoch": epoch, **self.scores(model, norm)})
        model.train(was)
        r = self.rows[-1]
        print("  position bias " + "  ".join(f"{m} {r[m]['bias']:.3f}" for m in METHODS[:3]), flush=True)

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass


def run_candidate(name: str, params_path: Path, data_path: Path, *, epochs: int, seed: int,
                  images: int, batch_size: int) -> dict[str, Any]:
    keys = {**preset.BF16_RECIPE, "train.epochs": epochs, "train.seed": seed,
            "tracking.enabled": False, "train.snapshot_images": 0, **CANDIDATES[name]}
    params = preset.apply(load_params(params_path), keys)
    data = load_arrays(data_path)
    plan = plan_run(params, data)
    x_val = torch.as_tensor(plan.val[0])
    hook = BiasEachEpoch(x_val[seeded_sample(len(x_val), images, seed)], batch_size)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(params, data, checkpoint=Path(tmp) / "checkpoint.pt", hook=hook, plan=plan)
    model = result.model.eval()
    x = result.norm(hook.x)
    maps = explanation_maps(model, x, METHODS, seed=seed, batch_size=batch_size)
    f = params.faithfulness
    _, curves = faithfulness_curves(model, x, maps, steps=f.steps, blur_kernel=f.blur_kernel,
                                    blur_sigma=f.blur_sigma, batch_size=batch_size,
                                    bf16=plan.bf16)
    return {"candidate": name, "overrides": CANDIDATES[name], "epochs": epochs, "seed": seed,
            "images": images, "cpu": cpu_model(), "seconds": time.perf_counter() - start,
            "val_acc": [r["val_acc"] for r in result.history],
            "deletion_auc": {m: float(auc(c.deletion).mean()) for m, c in curves.items()},
            "per_epoch": hook.rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--data", type=Path, default=Path("data/dataset.npz"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--only", default=",".join(CANDIDATES))
    ap.add_argument("--out", type=Path, default=Path("reports/position_causes.jsonl"))
    args = ap.parse_args()
    names = args.only.split(",")
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}: choose from {list(CANDIDATES)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        print(f"== {name} {CANDIDATES[name]}", flush=True)
        row = run_candidate(name, args.params, args.data, epochs=args.epochs, seed=args.seed,
                            images=args.images, batch_size=args.batch_size)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        last = row["per_epoch"][-1]
        print(f"{name}: val {row['val_acc'][-1]:.4f}  " + "  ".join(
            f"{m} bias {last[m]['bias']:.3f} del {row['deletion_auc'][m]:.3f}" for m in METHODS), flush=True)


if __name__ == "__main__":
    main()
