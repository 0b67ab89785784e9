"""The training loop: setup, resume, the epochs of `vitlens.train.step` steps with a progress bar
and an estimate, per-epoch validation, a checkpoint and the epoch's metrics after each."""
from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn
from tqdm import tqdm

from vitlens.config import Params, TrainConfig
from vitlens.data.cifar import TRAIN_IMAGES
from vitlens.data.imageset import ImageSet
from vitlens.data.normalize import Normalizer, channel_stats
from vitlens.data.split import Split, batch_indices, to_device
from vitlens.device import precision_line
from vitlens.model.vit import ViT, build_model, train_flops_per_image
from vitlens.tracking.runs import epoch_metrics
from vitlens.train.checkpoint import checkpoint_digest, checkpoint_state, save_checkpoint
from vitlens.train.distributed import Dist
from vitlens.train.ema import EMA
from vitlens.train.evaluation import evaluate_logits, split_logits
from vitlens.train.optim import Optimizer, make_optimizer
from vitlens.train.plan import Plan, plan_run
from vitlens.train.step import (
    EpochStats,
    batch_maker,
    check_finite,
    lr_at,
    optimizer_step,
    seed_epoch,
    smoothing_at,
    token_drop_at,
)

SYNC_EVERY = 20  # steps between the progress bar's host syncs: rare enough not to stall a GPU
ETA_STEP = 20  # the first epoch's step after which the whole run's time is estimated;
#               a multiple of SYNC_EVERY, so the clock is read just after a host sync


class EpochHook(Protocol):
    """Something the loop runs after every epoch's validation, whose state the checkpoint
    keeps (vitlens.explain.snapshots.AttentionSnapshots)."""

    def after_epoch(self, epoch: int, model: ViT, norm: Normalizer) -> None: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    model: ViT
    history: list[dict[str, float]]
    norm: Normalizer
    device: torch.device


def _train_epoch(bar: tqdm, fwd: nn.Module, s: Setup,
                 batch: Callable[[Tensor], tuple[Tensor, Tensor]], t: TrainConfig,
                 step: int, epoch: int, eta_total: int | None) -> tuple[EpochStats, int, float]:
    """One pass over this rank's batches (`bar` yields their indices, `batch` makes inputs
    and labels of them); returns the running sums, the step and the last lr. With
    `eta_total` (the run's last step), prints an estimate of the rest after ETA_STEP steps."""
    fwd.train()
    stats, t0, lr = EpochStats(s.device), time.perf_counter(), s.schedule(step)
    warm = t0  # when the first step ended: it compiles (train.compile) and warms caches
    for i, idx in enumerate(bar):
        lr = s.schedule(step)
        for g in s.opt.param_groups:
            g["lr"] = lr
        x, yb = batch(idx)
        loss, logits = optimizer_step(fwd, s.model, s.opt, x, yb, t, s.device,
                                      label_smoothing=s.smoothing(step), bf16=s.bf16)
        if s.ema is not None:
            s.ema.update(s.model)
        step += 1
        stats.add(loss, logits, yb)
        if i % SYNC_EVERY == 0:
            bar.set_postfix(loss=f"{check_finite(loss, epoch, step):.3f}",
                            acc=f"{stats.accuracy():.3f}",
                            img_s=f"{(i + 1) * t.batch_size / (time.perf_counter() - t0):.0f}")
            warm = time.perf_counter() if i == 0 else warm
        if eta_total is not None and i == ETA_STEP:
            per_step = (time.perf_counter() - warm) / i
            bar.write(f"estimate: {format_seconds(per_step * (eta_total - step))} of training "
                      f"for the {eta_total - step} steps left ({per_step * 1e3:.0f} ms/step "
                      f"after a first step of {warm - t0:.1f} s), plus validation")
    bar.close()
    return stats, step, lr


def format_seconds(s: float) -> str:
    """`95 s`, `12.5 min` or `1.6 h`: the unit a person reads an ETA in."""
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def epoch_images(p: Params, train_images: int = TRAIN_IMAGES) -> int:
    """Images one epoch trains on: what the validation split and data.train_subset leave of
    `train_images`, in whole batches (the train stage drops the last partial one)."""
    n = train_images - p.data.val_size
    n = min(n, p.data.train_subset) if p.data.train_subset else n
    return n // p.train.batch_size * p.train.batch_size


def training_flops(p: Params, train_images: int = TRAIN_IMAGES) -> float:
    """A run's training FLOPs: each epoch's images at the tokens that epoch keeps."""
    return sum(train_flops_per_image(dataclasses.replace(
        p.model, token_drop=token_drop_at(e, token_drop=p.model.token_drop, t=p.train)))
        for e in range(1, p.train.epochs + 1)) * epoch_images(p, train_images)


def device_splits(params: Params, data: ImageSet,
                  device: torch.device) -> tuple[Split, Split, Normalizer]:
    """The training and validation splits of `params` on `device`, and the normaliser of
    the training split's statistics."""
    return on_device(plan_run(params, data, device))


def on_device(plan: Plan) -> tuple[Split, Split, Normalizer]:
    """The plan's splits on its device, and the normaliser of the training split's statistics."""
    return (to_device(*plan.train, plan.device), to_device(*plan.val, plan.device),
            Normalizer(*channel_stats(plan.train[0])))


@dataclass
class Setup:
    """What a training run is made of, before its first step."""

    model: ViT
    opt: Optimizer
    train_split: Split
    val_split: Split
    norm: Normalizer
    device: torch.device
    steps_per_epoch: int
    schedule: Callable[[int], float]  # step -> lr
    smoothing: Callable[[int], float]  # step -> label smoothing
    gens: dict[str, torch.Generator]
    ema: EMA | None  # train.ema's average of the weights
    bf16: bool  # train.precision as it resolved on this device

    @property
    def final(self) -> ViT:
        """The weights a run validates, tests and saves: the average when there is one."""
        return cast(ViT, self.ema.model) if self.ema is not None else self.model


def setup(params: Params, plan: Plan) -> Setup:
    """Threads, the plan's splits on its device, a freshly initialised model and its optimizer."""
    t, device = params.train, plan.device
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    train_split, val_split, norm = on_device(plan)
    model = build_model(params.model, len(plan.classes)).to(device)
    steps_per_epoch = len(train_split) // t.batch_size
    total, warmup = steps_per_epoch * t.epochs, round(steps_per_epoch * t.warmup_epochs)
    schedule = partial(lr_at, total=total, warmup=warmup, lr=t.lr, min_lr=t.min_lr)
    gens = {"order": torch.Generator(device), "augment": torch.Generator(device)}
    return Setup(model, make_optimizer(model, t, device), train_split, val_split, norm, device,
                 steps_per_epoch, schedule, partial(smoothing_at, total=total, t=t), gens,
                 EMA(model, t.ema) if t.ema else None, plan.bf16)


def resume(s: Setup, state: dict | None) -> tuple[int, int, list[dict[str, float]]]:
    """(epochs done, steps done, history) of `state`, loaded into the model and optimizer;
    (0, 0, []) for a fresh run."""
    if state is None:
        return 0, 0, []
    s.model.load_state_dict(state["model"])
    s.opt.load_state_dict(state["optimizer"])
    if s.ema is not None:  # train.ema is in the digest: its checkpoints hold the average
        s.ema.restore(state)
    return state["epoch"], state["step"], state["history"]


def forward_module(model: nn.Module, t: TrainConfig,
                   wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """What the training step calls: the model, wrapped (DDP), compiled when train.compile."""
    fwd = wrap(model)
    return cast(nn.Module, torch.compile(fwd, mode=t.compile_mode)) if t.compile else fwd


def validate(s: Setup, classes: list[str], batch_size: int) -> tuple[float, float]:
    """(loss, accuracy) on the validation split, in the precision that trains: in fp32 it
    took a tenth of a bf16 epoch on a Zen 5 (the test set keeps evaluate's precision)."""
    logits = split_logits(s.final, s.val_split, s.norm, batch_size, s.device, bf16=s.bf16)
    val = evaluate_logits(logits, s.val_split.y, classes)
    return val.loss, val.accuracy


def epoch_line(row: dict[str, float], epochs: int, eta_s: float) -> str:
    return (f"epoch {int(row['epoch']):3d}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  "
            f"lr {row['lr']:.2e}  {row['epoch_seconds']:.1f}s  {row['images_per_second']:.0f} img/s  "
            f"eta {format_seconds(eta_s)}")


def train(params: Params, data: ImageSet, *, checkpoint: Path, state: dict | None = None,
          dist: Dist | None = None, run: Any = None,
          wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
          hook: EpochHook | None = None, plan: Plan | None = None) -> TrainResult:
    """Train the ViT described by `params` on `data`, continuing from `state` (a checkpoint
    from load_checkpoint) when given, and checkpointing to `checkpoint` after every epoch.
    `plan` is the run's device, precision and splits as the caller decided them (plan_run).

    `run` (a tracking.Run or None) receives per-epoch metrics; `wrap` wraps the model for
    the forward/backward pass (DistributedDataParallel); only the main process writes, and
    runs `hook` after each epoch's validation.
    """
    dist = dist or Dist()
    t = params.train
    plan = plan or plan_run(params, data)
    s = setup(params, plan)
    start_epoch, step, history = resume(s, state)
    if dist.main:
        print(precision_line(s.bf16, s.device), flush=True)
    if state is not None and dist.main:
        print(f"resuming from {checkpoint} after epoch {start_epoch}")
        if hook is not None:
            hook.restore(state)
    fwd = forward_module(s.model, t, wrap)
    batch = batch_maker(s.train_split, s.norm, t, s.gens["augment"], classes=len(plan.classes))
    digest = checkpoint_digest(params)
    for epoch in range(start_epoch + 1, t.epochs + 1):
        t0 = time.perf_counter()
        seed_epoch(t.seed, epoch, dist.rank, s.gens)
        s.model.drop_tokens(token_drop_at(epoch, token_drop=params.model.token_drop, t=t))
        bar = tqdm(batch_indices(len(s.train_split), t.batch_size, s.gens["order"],
                                 repeats=t.repeat_aug, rank=dist.rank, world=dist.world),
                   total=s.steps_per_epoch, desc=f"epoch {epoch}/{t.epochs}", leave=False,
                   disable=not dist.main, mininterval=1.0)
        first = epoch == start_epoch + 1 and dist.main
        stats, step, lr = _train_epoch(bar, fwd, s, batch, t, step, epoch,
                                       s.steps_per_epoch * t.epochs if first else None)
        train_loss, train_acc = stats.result(dist)
        train_seconds = time.perf_counter() - t0
        val_loss, val_acc = validate(s, plan.classes, params.evaluate.batch_size)
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
               "epoch_seconds": time.perf_counter() - t0,
               "images_per_second": s.steps_per_epoch * t.batch_size / train_seconds}
        history.append(row)
        if dist.main:
            if hook is not None:
                hook.after_epoch(epoch, s.final, s.norm)
            # This process's first epoch carries the warm-up: left out once there are others.
            recent = history[start_epoch + 1:] or history[start_epoch:]
            mean_s = statistics.mean(r["epoch_seconds"] for r in recent)
            print(epoch_line(row, t.epochs, mean_s * (t.epochs - epoch)), flush=True)
            # Checkpoint, then log: a kill in between leaves the epoch unlogged, and the
            # resumed run logs what its checkpoint holds but the store lacks (exactly once).
            extra = {**(hook.state() if hook is not None else {}),
                     **(s.ema.state() if s.ema is not None else {})}
            save_checkpoint(checkpoint_state(s.model, s.opt, epoch, step, history, digest,
                                             run.id if run is not None else None, extra), checkpoint)
            if run is not None:
                run.log_metrics(epoch_metrics(row), step=epoch)
    return TrainResult(s.final, history, s.norm, s.device)
