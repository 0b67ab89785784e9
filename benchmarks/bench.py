"""Benchmarks, in one process: our ViT vs timm's per full train step, the attention kernels,
the training loop vs its bare step, bf16 vs fp32, our on-device batch pipeline vs a per-image
torchvision DataLoader, and (CUDA only) a 20-epoch time estimate, eager vs torch.compile.
Writes reports/bench.json and prints the tables.

    python -m benchmarks.bench [--quick]     (make bench; vitlens importable: the venv)

Timings are medians; the contenders run in alternating rounds (A, B, B, A, ...) so that
drifting background load hits every side alike.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.bench_attention import bench_attention
from benchmarks.bench_data import bench_levers, bench_pipelines
from benchmarks.bench_loop import bench_loop
from benchmarks.bench_precision import bench_precision
from benchmarks.bench_report import environment, report
from vitlens.config import ModelConfig, Params, load_params
from vitlens.data.cifar import TRAIN_IMAGES
from vitlens.device import native_bf16_cpu, pick_device
from vitlens.errors import VitlensError, run_main
from vitlens.io import write_json
from vitlens.model.vit import build_model
from vitlens.train import preset
from vitlens.train.harness import (
    IMAGE_SIZE,
    NUM_CLASSES,
    Harness,
    alternate,
    augmented,
    harness,
    paired_speedup,
    ready,
    summarize_calls,
    synthetic_split,
    time_calls,
    validation_pass,
)


@dataclasses.dataclass(frozen=True)
class Settings:
    batch_size: int
    steps: int           # timed train steps per model
    warmup: int          # untimed train steps per model first
    rounds: int          # alternating blocks the timed steps are split into
    images: int          # synthetic uint8 images per pipeline epoch
    pipeline_epochs: int  # timed epochs per pipeline, one per round, after one untimed
    model: ModelConfig   # as trained (dropout, drop path) for the epoch estimate


QUICK_MODEL = ModelConfig(image_size=IMAGE_SIZE, patch_size=8, dim=32, depth=1, heads=2,
                          mlp_ratio=2.0, dropout=0.0, attn_dropout=0.0, drop_path=0.0,
                          pos_embed="learned", stem="patch", token_drop=0.0,
                          pool="cls", lsa=False, registers=0)


def settings(args: argparse.Namespace, params: Params, device: torch.device) -> Settings:
    """Defaults from params.yaml (batch size, model); --quick shrinks everything. A CPU step
    of the default model takes about half a second (several under load), a CUDA one ms."""
    if args.quick:
        s = Settings(batch_size=16, steps=2, warmup=1, rounds=2, images=128,
                     pipeline_epochs=2, model=QUICK_MODEL)
    else:
        cuda = device.type == "cuda"
        s = Settings(batch_size=params.train.batch_size, steps=50 if cuda else 12,
                     warmup=10 if cuda else 2, rounds=4, images=10_000,
                     pipeline_epochs=5 if cuda else 3, model=params.model)
    given = {"batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup}
    s = dataclasses.replace(s, **{k: v for k, v in given.items() if v is not None})
    if min(s.batch_size, s.steps) < 1 or s.warmup < 0:
        raise VitlensError("--batch-size and --steps must be >= 1, --warmup >= 0")
    if s.batch_size > s.images:
        raise VitlensError(f"--batch-size {s.batch_size} must be <= the {s.images} "
                           "synthetic pipeline images")
    return s


# --- 1. train step: our ViT vs timm (2, the data pipeline: benchmarks.bench_data) ---

def import_timm() -> Any:
    try:
        import timm.models.vision_transformer
    except ImportError:
        raise VitlensError("timm is not installed: pip install -e '.[dev]'") from None
    return timm


def timm_vit(cfg: ModelConfig) -> nn.Module:
    """timm's VisionTransformer with our sizes and layout, so the parameter counts match."""
    return import_timm().models.vision_transformer.VisionTransformer(
        img_size=cfg.image_size, patch_size=cfg.patch_size, num_classes=NUM_CLASSES,
        embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
        qkv_bias=True, class_token=True, global_pool="token", pre_norm=False,
        drop_rate=0.0, pos_drop_rate=0.0, proj_drop_rate=0.0, attn_drop_rate=0.0,
        drop_path_rate=0.0)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def logits_dtype(h: Harness) -> str:
    """The dtype one more step's logits come out in: the precision that really ran."""
    return str(h.step()[1].dtype).removeprefix("torch.")


def bench_models(params: Params, s: Settings, device: torch.device) -> dict[str, Any]:
    """loop.train's own step (vitlens.train.harness: the same AdamW param groups, the
    params' precision) of our ViT and of timm's, on the same random batch."""
    # Dropout, drop path and token dropout off in both: this compares the architectures' cost.
    cfg = dataclasses.replace(s.model, dropout=0.0, attn_dropout=0.0, drop_path=0.0, token_drop=0.0)
    torch.manual_seed(0)
    x = torch.randn(s.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    y = torch.randint(0, NUM_CLASSES, (s.batch_size,), device=device)
    hs = {"ours": harness(params, ready(x, y), device, model=build_model(cfg, NUM_CLASSES)),
          "timm": harness(params, ready(x, y), device, model=timm_vit(cfg))}
    for h in hs.values():
        time_calls(h.step, s.warmup, device)
    times = alternate({name: h.step for name, h in hs.items()}, n=s.steps, rounds=s.rounds,
                      device=device)
    out: dict[str, Any] = {name: {"params": count_params(h.model), "precision": h.precision,
                                  "logits_dtype": logits_dtype(h),
                                  **summarize_calls(times[name], s.batch_size)}
                           for name, h in hs.items()}
    out["ratio_ours_over_timm"] = (out["ours"]["images_per_second"]
                                   / out["timm"]["images_per_second"])
    out["paired_ratio_ours_over_timm"] = paired_speedup(out["ours"], out["timm"])
    return out


# --- 3. CUDA: a 20-epoch estimate, eager vs torch.compile ---

def bench_epochs(params: Params, s: Settings, device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"skipped": f"needs a CUDA device (bf16, torch.compile); ran on {device.type}"}
    return estimate_epochs(params, s, device)


def estimate_epochs(params: Params, s: Settings, device: torch.device) -> dict[str, Any]:
    """Seconds per epoch of the model as trained (augmented batches, drop path), eager and
    compiled, from median train and validation step times; the per-epoch extras of
    loop.train (metrics, checkpoint) are left out, so this is a lower bound."""
    t = params.train
    train_images = TRAIN_IMAGES - params.data.val_size  # CIFAR-10's, before the validation split
    steps_per_epoch = train_images // s.batch_size  # training drops the last partial batch
    val_batch = params.evaluate.batch_size  # what loop.validate passes at a time
    val_batches = math.ceil(params.data.val_size / val_batch)
    split, norm = synthetic_split(max(s.batch_size, val_batch), device)
    as_trained = dataclasses.replace(params, model=s.model)
    hs = {name: harness(as_trained, augmented(split, norm, t, seed=1), device, compile_mode=mode)
          for name, mode in (("eager", None), ("compiled", "default"))}
    first = {name: time_calls(h.step, 1, device)[0] for name, h in hs.items()}
    for h in hs.values():
        time_calls(h.step, s.warmup, device)
    times = alternate({name: h.step for name, h in hs.items()}, n=s.steps, rounds=s.rounds,
                      device=device)

    # loop.train validates the uncompiled model (loop.validate), in the precision it trains
    eager = hs["eager"]
    validate = validation_pass(eager.model, norm(split.x[:val_batch]), device, bf16=eager.bf16)
    time_calls(validate, s.warmup, device)
    val_s = statistics.median(time_calls(validate, max(s.steps // 2, 1), device))

    out: dict[str, Any] = {"train_images": train_images, "val_images": params.data.val_size,
                           "epochs": t.epochs, "steps_per_epoch": steps_per_epoch,
                           "val_batch_seconds": val_s}
    for name, sec in times.items():
        r = summarize_calls(sec, s.batch_size)
        epoch_s = steps_per_epoch * r["median_s"] + val_batches * val_s
        out[name] = {**r, "first_step_s": first[name], "epoch_s": epoch_s,
                     "total_s": first[name] + t.epochs * epoch_s}
    return out


def attention_shapes(params: Params, s: Settings, quick: bool, device: torch.device
                     ) -> list[tuple[str, ModelConfig, int, torch.dtype]]:
    """The CPU preset's and the default's model and batch size; --quick's tiny one alone.
    Each in fp32, and in bf16 too where it is native (CUDA, a CPU with the flags; --quick
    always: emulated bf16 takes minutes at the real shapes)."""
    if quick:
        subjects = [("quick", s.model, 4)]
    else:
        cpu = preset.apply(params, preset.MODEL)
        subjects = [("preset", cpu.model, cpu.train.batch_size),
                    ("default", params.model, params.train.batch_size)]
    bf16 = quick or device.type == "cuda" or bool(native_bf16_cpu())
    return [(name + suffix, cfg, batch, dtype) for name, cfg, batch in subjects
            for suffix, dtype in (("", torch.float32), (", bf16", torch.bfloat16))
            if dtype == torch.float32 or bf16]


def loop_subject(params: Params, s: Settings, quick: bool) -> tuple[Params, int]:
    """The loop bench's params and batch size: the CPU preset's; --quick's tiny model."""
    if quick:
        return dataclasses.replace(params, model=s.model), s.batch_size
    cpu = preset.apply(params, preset.MODEL)
    return cpu, cpu.train.batch_size


def lever_subject(result: dict[str, Any], s: Settings, device: torch.device) -> tuple[int, float]:
    """The batch size and step seconds the augmentation levers are weighed against: the step
    this device trains, the CPU preset's in its faster precision on a CPU (the default
    model's step is ~10x longer there and would hide their cost), the default's elsewhere."""
    if device.type != "cpu":
        return s.batch_size, result["models"]["ours"]["median_s"]
    pr = result["precision"]
    return pr["batch_size"], pr["bf16" if pr["native_bf16_flags"] else "fp32"]["median_s"]


def run_bench(params: Params, s: Settings, device: torch.device,
              quick: bool = False) -> dict[str, Any]:
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    load_before = os.getloadavg()[0]
    models = bench_models(params, s, device)
    result: dict[str, Any] = {
        "environment": environment(device, import_timm().__version__, models["ours"]["precision"]),
        "config": {"batch_size": s.batch_size, "steps": s.steps, "warmup": s.warmup,
                   "rounds": s.rounds, "pipeline_epochs": s.pipeline_epochs,
                   "model": dataclasses.asdict(s.model)},
        "models": models,
        "attention": {name: bench_attention(cfg, batch, steps=s.steps, rounds=s.rounds,
                                            device=device, dtype=dtype)
                      for name, cfg, batch, dtype in attention_shapes(params, s, quick, device)},
        "loop": bench_loop(*loop_subject(params, s, quick), steps=4 if quick else 30,
                           device=device),
        "precision": bench_precision(*loop_subject(params, s, quick), steps=s.steps,
                                     rounds=s.rounds, device=device),
        "pipeline": bench_pipelines(params, images=s.images, batch_size=s.batch_size,
                                     epochs=s.pipeline_epochs, device=device),
        "epochs": bench_epochs(params, s, device)}
    batch, step_s = lever_subject(result, s, device)
    result["levers"] = bench_levers(params, images=max(s.images, batch), batch_size=batch,
                                    rounds=s.rounds, step_s=step_s, device=device)
    # Other processes' CPU load skews CPU timings: record it to judge the numbers by.
    result["environment"]["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    ap.add_argument("--batch-size", type=int, help="images per step (default: train.batch_size)")
    ap.add_argument("--steps", type=int, help="timed train steps per model (default: 12 on "
                    "CPU, 50 on CUDA)")
    ap.add_argument("--warmup", type=int, help="untimed steps per model first (default: 2 on "
                    "CPU, 10 on CUDA)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes and steps, for tests")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    device = pick_device(args.device)
    result = run_bench(params, settings(args, params, device), device, quick=args.quick)
    write_json(args.out, result)
    print(report(result))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    run_main(main)
