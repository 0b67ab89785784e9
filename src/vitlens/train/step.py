"""One training step and what it needs: the lr schedule, per-epoch seeding, the augmented
batch and the step itself, and running sums that never sync the host. The training
loop (vitlens.train.loop), the bench and the profiler all run this same step."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlens.config import TrainConfig
from vitlens.data.augment import CropFlip, cutout
from vitlens.data.mix import mix_batch
from vitlens.data.normalize import Normalizer
from vitlens.data.split import Split
from vitlens.data.trivial import trivial_augment
from vitlens.device import autocast
from vitlens.errors import VitlensError
from vitlens.train.distributed import Dist
from vitlens.train.optim import Optimizer


def lr_at(step: int, *, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warmup over `warmup` steps (lr/warmup at step 0, lr at step warmup - 1), then
    cosine decay to min_lr; no warmup starts the decay at lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def smoothing_at(step: int, *, total: int, t: TrainConfig) -> float:
    """train.label_smoothing; with train.label_smoothing_decay, linearly down to 0 at the
    last of `total` steps (airbench's choice: soft targets early, sharp ones at the end)."""
    if not t.label_smoothing_decay:
        return t.label_smoothing
    return t.label_smoothing * max(0.0, 1.0 - step / max(total - 1, 1))


def token_drop_at(epoch: int, *, token_drop: float, t: TrainConfig) -> float:
    """model.token_drop in 1-based `epoch`; with train.token_drop_decay, linearly down to 0
    in the last epoch: fast short sequences early, the evaluated full one at the end."""
    if not t.token_drop_decay:
        return token_drop
    return token_drop * (t.epochs - epoch) / max(t.epochs - 1, 1)


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
        """y: labels (B,), or soft targets (B, classes), scored on their larger part."""
        y = y.argmax(1) if y.ndim == 2 else y
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


def check_finite(loss: Tensor, epoch: int, step: int) -> float:
    value = loss.item()
    if not math.isfinite(value):
        raise VitlensError(f"training loss is {value} (NaN or infinite) at epoch {epoch} step {step}; "
                           "lower train.lr or raise train.warmup_epochs")
    return value


def batch_maker(split: Split, norm: Normalizer, t: TrainConfig, augment: torch.Generator, *,
                classes: int) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Indices -> the training input of `split`: images cropped, flipped, maybe trivially
    augmented (uint8), normalised, maybe cut out, maybe MixUp'd or CutMix'd; labels (B,), or
    soft targets (B, classes) when mixed."""
    crop_flip = CropFlip(split.x, padding=t.crop_padding, flip=t.flip, fill=t.crop_fill)

    def batch(idx: Tensor) -> tuple[Tensor, Tensor]:
        x = crop_flip(idx, augment)
        x = norm(trivial_augment(x, augment) if t.trivial_augment else x)
        x = cutout(x, t.cutout, augment) if t.cutout else x
        return mix_batch(x, split.y[idx], classes, mixup_alpha=t.mixup, cutmix_alpha=t.cutmix,
                         generator=augment)
    return batch


def optimizer_step(fwd: nn.Module, model: nn.Module, opt: Optimizer, x: Tensor,
                   y: Tensor, t: TrainConfig, device: torch.device, *,
                   bf16: bool, label_smoothing: float | None = None) -> tuple[Tensor, Tensor]:
    """One step on (x, y): autocast forward through `fwd` (the model, maybe wrapped) in bf16
    when `bf16` (device.use_bf16), label-smoothed loss in fp32
    (train.label_smoothing unless given), backward, clipping, AdamW; returns (loss,
    logits), left on the device: reading them is a host sync."""
    smoothing = t.label_smoothing if label_smoothing is None else label_smoothing
    with autocast(device, bf16):
        logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if t.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    opt.step()
    return loss, logits
