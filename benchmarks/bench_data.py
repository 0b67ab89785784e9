"""The data pipeline benchmark: our on-device batches (one gather for crop/flip, one pass to
normalise) against the usual per-image torchvision DataLoader, on the same synthetic images."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from benchmarks.bench_report import loader_name
from vitlens.config import Params, TrainConfig
from vitlens.data.normalize import Normalizer, channel_stats
from vitlens.data.split import Split, batch_indices
from vitlens.train.harness import (
    IMAGE_SIZE,  # the pipelines produce CIFAR-sized images whatever the model
    NUM_CLASSES,
    alternate,
    paired_speedup,
    summarize_calls,
    synthetic_images,
)
from vitlens.train.step import batch_maker

LOADERS = tuple((kind, w) for kind in ("tensor", "pil") for w in (0, 2))  # images, workers


class TransformedImages(Dataset):
    """uint8 images with a per-image transform, the usual DataLoader setup. As `pil` images,
    the way torchvision.datasets.CIFAR10 hands them out (the notebook's setup), or as uint8
    tensors, which torchvision's transforms handle faster here."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Callable[[Any], Tensor],
                 pil: bool = False):
        self.x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if pil else torch.from_numpy(x)
        self.y, self.transform, self.pil = torch.from_numpy(y), transform, pil

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image = Image.fromarray(np.asarray(self.x[i])) if self.pil else self.x[i]
        return self.transform(image), self.y[i]


def per_image_transform(padding: int, flip: bool, norm: Normalizer,
                        pil: bool = False) -> transforms.Compose:
    """The per-image twin of CropFlip + normalize: zero-padded crop, flip, [0, 1], z."""
    steps: list[Callable] = [transforms.RandomCrop(IMAGE_SIZE, padding=padding)] if padding else []
    steps += [transforms.RandomHorizontalFlip()] if flip else []
    to_float = transforms.ToTensor() if pil else transforms.ConvertImageDtype(torch.float32)
    return transforms.Compose([*steps, to_float, transforms.Normalize(norm.mean, norm.std)])


def ours_epoch(split: Split, norm: Normalizer, params: Params, batch_size: int,
               device: torch.device) -> Callable[[], None]:
    """An epoch of inputs as loop.train makes them."""
    order = torch.Generator(device).manual_seed(0)
    batch = batch_maker(split, norm, params.train, torch.Generator(device).manual_seed(1),
                        classes=NUM_CLASSES)

    def epoch() -> None:
        for idx in batch_indices(len(split), batch_size, order):
            batch(idx)
    return epoch


def loader_epoch(loader: DataLoader, device: torch.device) -> Callable[[], None]:
    def epoch() -> None:
        for xb, yb in loader:
            xb.to(device, non_blocking=True)
            yb.to(device, non_blocking=True)
    return epoch


def one_thread(fn: Callable[[], None]) -> Callable[[], None]:
    """`fn` with torch on one CPU thread: on a shared CPU, every multi-threaded op of a small
    batch waits at a barrier for a descheduled thread (DataLoader workers use one thread)."""
    def run() -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            fn()
        finally:
            torch.set_num_threads(threads)
    return run


def bench_pipelines(params: Params, *, images: int, batch_size: int, epochs: int,
                    device: torch.device) -> dict[str, Any]:
    """Images/s of an epoch of `images` synthetic images through each pipeline, `epochs`
    timed epochs each after one untimed, in alternating rounds."""
    t = params.train
    x, y = synthetic_images(images)
    norm = Normalizer(*channel_stats(x))
    split = Split(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
    runs = {"ours": ours_epoch(split, norm, params, batch_size, device)}
    if device.type == "cpu" and torch.get_num_threads() > 1:
        runs["ours_1_thread"] = one_thread(runs["ours"])
    for kind, w in LOADERS:
        pil = kind == "pil"
        ds = TransformedImages(x, y, per_image_transform(t.crop_padding, t.flip, norm, pil), pil)
        # Persistent workers: the untimed first epoch pays their start-up, not the timed ones.
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                            num_workers=w, persistent_workers=w > 0,
                            pin_memory=device.type == "cuda")
        runs[loader_name(kind, w)] = loader_epoch(loader, device)
    for epoch in runs.values():
        epoch()
    times = alternate(runs, n=epochs, rounds=epochs, device=device)
    per_epoch = (images // batch_size) * batch_size
    out: dict[str, Any] = {"images": images, "loaders": [list(kw) for kw in LOADERS],
                           **{name: summarize_calls(sec, per_epoch) for name, sec in times.items()}}
    best = max((loader_name(*kw) for kw in LOADERS), key=lambda k: out[k]["images_per_second"])
    out["best_dataloader"] = best
    out["ratio_ours_over_best_dataloader"] = (out["ours"]["images_per_second"]
                                              / out[best]["images_per_second"])
    out["paired_ratio_ours_over_best_dataloader"] = paired_speedup(out["ours"], out[best])
    return out


LEVERS: dict[str, dict[str, Any]] = {"trivial_augment": {"trivial_augment": True},
                                     "mixup": {"mixup": 0.8}, "cutmix": {"cutmix": 1.0}}


def bench_levers(params: Params, *, images: int, batch_size: int, rounds: int, step_s: float,
                 device: torch.device) -> dict[str, Any]:
    """What each batch-level augmentation lever adds to making a batch, on `images` synthetic
    images: seconds per batch with the params' pipeline as it is (`plain`) and with each lever
    on, in alternating rounds; the extra over `step_s`, a training step's seconds."""
    x, y = synthetic_images(images)
    norm = Normalizer(*channel_stats(x))
    split = Split(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
    idx = torch.arange(batch_size, device=device)
    base = {k: v for k, v in dataclasses.asdict(params.train).items() if k not in ("mixup", "cutmix")}
    configs: dict[str, dict[str, Any]] = {"plain": {**base, "trivial_augment": False, "mixup": 0.0,
                                                    "cutmix": 0.0}}
    configs |= {name: {**configs["plain"], **keys} for name, keys in LEVERS.items()}
    makers = {name: batch_maker(split, norm, TrainConfig(**cfg), torch.Generator(device).manual_seed(0),
                                classes=NUM_CLASSES) for name, cfg in configs.items()}
    fns: dict[str, Callable[[], Any]] = {name: partial(make, idx) for name, make in makers.items()}
    for fn in fns.values():
        fn()
    times = alternate(fns, n=4 * rounds, rounds=rounds, device=device)
    out: dict[str, Any] = {name: summarize_calls(sec, batch_size) for name, sec in times.items()}
    for name in LEVERS:
        out[name]["extra_share_of_step"] = (out[name]["median_s"] - out["plain"]["median_s"]) / step_s
    out["step_s"] = step_s
    return out
