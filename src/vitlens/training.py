"""The training loop: AdamW, warmup + cosine, label smoothing, clipping, per-epoch
validation, atomic checkpoints that resume only under the params that wrote them."""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from vitlens.cifar import Cifar10
from vitlens.config import Params, TrainConfig
from vitlens.data import (
    CropFlip,
    Normalizer,
    Split,
    batch_indices,
    channel_stats,
    split_train_val,
    to_device,
)
from vitlens.device import autocast, pick_device
from vitlens.distributed import Dist
from vitlens.errors import VitlensError
from vitlens.evaluation import evaluate_logits, predict
from vitlens.io import atomic_path
from vitlens.model import ViT, build_model, param_groups
from vitlens.tracking import epoch_metrics

CHECKPOINT_SECTIONS = ("data", "model", "train")
VAL_BATCH = 500  # images per validation forward pass (a memory bound, not a hyperparameter)
ETA_STEP = 20  # the first epoch's step after which the whole run's time is estimated


def lr_at(step: int, *, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warmup over `warmup` steps (lr/warmup at step 0, lr at step warmup - 1), then
    cosine decay to min_lr; no warmup starts the decay at lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


@dataclass
class TrainResult:
    model: ViT
    history: list[dict[str, float]]
    norm: Normalizer
    device: torch.device


def checkpoint_state(model: nn.Module, opt: torch.optim.Optimizer, epoch: int, step: int,
                     history: list, digest: str, run_id: str | None) -> dict:
    # No RNG state: every epoch reseeds its generators (seed_epoch), on every rank.
    return {"digest": digest, "epoch": epoch, "step": step, "history": history,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "run_id": run_id or ""}


def save_checkpoint(state: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, digest: str) -> dict | None:
    """The checkpoint at `path` if it was written under the same params, else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt checkpoint is ignored, not fatal
        print(f"ignoring unreadable checkpoint {path}: {e}")
        return None
    if state.get("digest") != digest:
        print(f"ignoring checkpoint {path}: it was written under other params")
        return None
    return state


def seed_epoch(seed: int, epoch: int, rank: int, gens: dict[str, torch.Generator]) -> None:
    """Seed everything random in an epoch from (seed, epoch, rank) alone, so a resumed run
    repeats an uninterrupted one exactly on every rank without saving RNG states. The data
    order is the same on every rank (each takes its own shard of it); crops, flips, dropout
    and drop-path differ per rank."""
    base = seed * 1_000_003 + epoch * 1_009
    gens["order"].manual_seed(base)
    gens["augment"].manual_seed(base + 1 + rank)
    torch.manual_seed(base + 101 + rank)


class EpochStats:
    """Running sums kept on the device, so the hot loop never waits on a host sync (the image
    count lives on the host: a tensor made from it each step would be a blocking copy)."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss * n, correct
        self.n = 0

    def add(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        self.sums += torch.stack([loss.detach().double() * y.numel(),
                                  (logits.argmax(1) == y).sum().double()])
        self.n += y.numel()

    def accuracy(self) -> float:
        return self.sums[1].item() / self.n

    def result(self, dist: Dist) -> tuple[float, float]:
        totals = torch.cat([self.sums, self.sums.new_tensor([self.n])])
        loss_sum, correct, n = dist.reduce(totals).tolist()
        if not math.isfinite(loss_sum):
            raise VitlensError("training loss became NaN or infinite; lower train.lr or "
                               "raise train.warmup_epochs")
        return loss_sum / n, correct / n


def _check_finite(loss: Tensor, epoch: int, step: int) -> float:
    value = loss.item()
    if not math.isfinite(value):
        raise VitlensError(f"training loss is {value} (NaN or infinite) at epoch {epoch} step {step}; "
                           "lower train.lr or raise train.warmup_epochs")
    return value


def batch_maker(split: Split, norm: Normalizer, t: TrainConfig,
                augment: torch.Generator) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Indices -> (cropped, flipped, normalised images, labels) of `split`: the training input."""
    crop_flip = CropFlip(split.x, padding=t.crop_padding, flip=t.flip)

    def batch(idx: Tensor) -> tuple[Tensor, Tensor]:
        return norm(crop_flip(idx, augment)), split.y[idx]
    return batch


def make_optimizer(model: nn.Module, t: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, decay on weight matrices only; the fused kernel where there is one (one
    launch per step on CUDA instead of one per op)."""
    return torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.999),
                             fused=device.type in ("cuda", "cpu"))


def optimizer_step(fwd: nn.Module, model: nn.Module, opt: torch.optim.Optimizer, x: Tensor,
                   y: Tensor, t: TrainConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    """One step on (x, y): autocast forward through `fwd` (the model, maybe wrapped),
    label-smoothed loss in fp32, backward, clipping, AdamW; returns (loss, logits), left on
    the device: reading them is a host sync."""
    with autocast(device):
        logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=t.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if t.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    opt.step()
    return loss, logits


def _train_epoch(bar: tqdm, fwd: nn.Module, model: nn.Module, opt: torch.optim.Optimizer,
                 batch: Callable[[Tensor], tuple[Tensor, Tensor]], t: TrainConfig,
                 schedule: Callable[[int], float], step: int, epoch: int,
                 device: torch.device, eta_total: int | None) -> tuple[EpochStats, int, float]:
    """One pass over this rank's batches (`bar` yields their indices, `batch` makes inputs
    and labels of them); returns the running sums, the step and the last lr. With
    `eta_total` (the run's last step), prints an estimate of the rest after ETA_STEP steps."""
    fwd.train()
    stats, t0, lr = EpochStats(device), time.perf_counter(), schedule(step)
    for i, idx in enumerate(bar):
        lr = schedule(step)
        for g in opt.param_groups:
            g["lr"] = lr
        x, yb = batch(idx)
        loss, logits = optimizer_step(fwd, model, opt, x, yb, t, device)
        step += 1
        stats.add(loss, logits, yb)
        if i % 20 == 0:  # a host sync: rare enough not to stall a GPU
            bar.set_postfix(loss=f"{_check_finite(loss, epoch, step):.3f}",
                            acc=f"{stats.accuracy():.3f}",
                            img_s=f"{(i + 1) * t.batch_size / (time.perf_counter() - t0):.0f}")
        if eta_total is not None and i == ETA_STEP:
            per_step = (time.perf_counter() - t0) / (i + 1)
            bar.write(f"estimate: {format_seconds(per_step * (eta_total - step))} of training "
                      f"for the {eta_total - step} steps left ({per_step * 1e3:.0f} ms/step), "
                      "plus validation")
    bar.close()
    return stats, step, lr


def format_seconds(s: float) -> str:
    """`95 s`, `12.5 min` or `1.6 h`: the unit a person reads an ETA in."""
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def checkpoint_digest(params: Params) -> str:
    return params.digest(*CHECKPOINT_SECTIONS)


def device_splits(params: Params, data: Cifar10,
                  device: torch.device) -> tuple[Split, Split, Normalizer]:
    """The training and validation splits of `params` on `device`, and the normaliser of
    the training split's statistics."""
    d, t = params.data, params.train
    (xtr, ytr), (xval, yval) = split_train_val(data, val_size=d.val_size, seed=d.val_seed,
                                               subset=d.train_subset)
    if len(ytr) < t.batch_size:
        raise VitlensError(f"train.batch_size={t.batch_size} must be <= the {len(ytr)} "
                           "training images left after the validation split and subset")
    return to_device(xtr, ytr, device), to_device(xval, yval, device), Normalizer(*channel_stats(xtr))


def train(params: Params, data: Cifar10, *, checkpoint: Path, state: dict | None = None,
          dist: Dist | None = None, run: Any = None,
          wrap: Callable[[nn.Module], nn.Module] = lambda m: m) -> TrainResult:
    """Train the ViT described by `params` on `data`, continuing from `state` (a checkpoint
    from load_checkpoint) when given, and checkpointing to `checkpoint` after every epoch.

    `run` (a tracking.Run or None) receives per-epoch metrics; `wrap` wraps the model for
    the forward/backward pass (DistributedDataParallel); only the main process writes.
    """
    dist = dist or Dist()
    t = params.train
    device = pick_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    train_split, val_split, norm = device_splits(params, data, device)

    model = build_model(params.model, len(data.classes)).to(device)
    opt = make_optimizer(model, t, device)
    gens = {"order": torch.Generator(device), "augment": torch.Generator(device)}
    steps_per_epoch = len(train_split) // t.batch_size
    total, warmup = steps_per_epoch * t.epochs, round(steps_per_epoch * t.warmup_epochs)
    digest = checkpoint_digest(params)

    history: list[dict[str, float]] = []
    start_epoch, step = 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        if dist.main:
            print(f"resuming from {checkpoint} after epoch {start_epoch}")
    fwd = wrap(model)
    if t.compile:
        fwd = cast(nn.Module, torch.compile(fwd, mode=t.compile_mode))

    schedule = partial(lr_at, total=total, warmup=warmup, lr=t.lr, min_lr=t.min_lr)
    batch = batch_maker(train_split, norm, t, gens["augment"])
    for epoch in range(start_epoch + 1, t.epochs + 1):
        t0 = time.perf_counter()
        seed_epoch(t.seed, epoch, dist.rank, gens)
        bar = tqdm(batch_indices(len(train_split), t.batch_size, gens["order"],
                                 rank=dist.rank, world=dist.world),
                   total=steps_per_epoch, desc=f"epoch {epoch}/{t.epochs}", leave=False,
                   disable=not dist.main, mininterval=1.0)
        first = epoch == start_epoch + 1 and dist.main
        stats, step, lr = _train_epoch(bar, fwd, model, opt, batch, t, schedule, step, epoch,
                                       device, total if first else None)
        train_loss, train_acc = stats.result(dist)
        train_seconds = time.perf_counter() - t0
        val = evaluate_logits(predict(model, val_split, norm, VAL_BATCH, device),
                              val_split.y, data.classes)
        val_loss, val_acc = val.loss, val.accuracy
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
               "epoch_seconds": time.perf_counter() - t0,
               "images_per_second": steps_per_epoch * t.batch_size / train_seconds}
        history.append(row)
        if dist.main:
            mean_s = statistics.mean(r["epoch_seconds"] for r in history[start_epoch:])
            print(f"epoch {epoch:3d}/{t.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                  f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {lr:.2e}  "
                  f"{row['epoch_seconds']:.1f}s  {row['images_per_second']:.0f} img/s  "
                  f"eta {format_seconds(mean_s * (t.epochs - epoch))}", flush=True)
            # Checkpoint, then log: a kill in between leaves the epoch unlogged, and the
            # resumed run logs what its checkpoint holds but the store lacks (exactly once).
            save_checkpoint(checkpoint_state(model, opt, epoch, step, history, digest,
                                             run.id if run is not None else None), checkpoint)
            if run is not None:
                run.log_metrics(epoch_metrics(row), step=epoch)
    return TrainResult(model, history, norm, device)


