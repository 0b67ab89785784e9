"""Reading a folder of labelled pictures: vitlens's `read_folder` against torchvision's
`ImageFolder` through a `DataLoader`, side by side on the same files, the folder scan included.

    python -m benchmarks.bench_folder [--small 20000] [--large 3000] [--large-px 500x375]
        [--large-size 64] [--cifar cifar-10-python.tar.gz] [--out reports/bench_folder.json]

Two folders, ten class folders each: small pictures (32x32 JPEGs, read at 32 px: made from
smooth random noise, or the first pictures of a CIFAR-10 python archive with --cifar) and
photo-sized ones (--large-px JPEGs brought to --large-size px). Each side reads every picture
into uint8 pixels once per round, after an untimed pass that warms the page cache; rounds
alternate the order (A B, B A, ...) and the median counts. Prints a JSON of pictures per
second, and of CPU seconds (all processes; steadier than the clock on a busy machine), and
writes it to --out.

The sides do not do the same work: ImageFolder + PILToTensor (+ Resize and CenterCrop for
photos, bilinear) hands out batches; read_folder also hashes every file, turns it upright
(EXIF), lays it on white, crops with Lanczos, splits per class and fills the final arrays.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

from benchmarks.bench_report import cpu_model
from vitlens.data.cifar import read_archive
from vitlens.data.decode import cpu_count
from vitlens.data.folder import read_folder
from vitlens.io import write_json

CLASSES = 10
LOADER_WORKERS = 2  # torchvision's side: the usual DataLoader(num_workers=2)
BATCH = 256


def smooth_noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A picture-like (h, w, 3) uint8: coarse colour blobs, resized up, with fine grain."""
    coarse = Image.fromarray(rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), np.uint8))
    base = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), np.int16)
    return np.clip(base + rng.integers(-8, 9, base.shape, np.int16), 0, 255).astype(np.uint8)


def make_folder(root: Path, n: int, w: int, h: int, cifar: Path | None, seed: int = 0) -> Path:
    """root/<class>/<i>.jpg, n JPEGs (quality 90) of w x h; reused when root holds them."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == n:
        return root
    rng = np.random.default_rng(seed)
    if cifar is not None:
        data = read_archive(cifar, official=False)
        x = np.concatenate([data.x_train, data.x_test])[:n].transpose(0, 2, 3, 1)
        y = np.concatenate([data.y_train, data.y_test])[:n]
        names = data.classes
        if len(x) < n:
            raise SystemExit(f"{cifar} holds {len(x)} pictures, fewer than {n}")
    else:
        y, names = np.arange(n) % CLASSES, [f"class{k}" for k in range(CLASSES)]
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        picture = Image.fromarray(smooth_noise(rng, w, h) if cifar is None else x[i])
        if picture.size != (w, h):
            picture = picture.resize((w, h), Image.Resampling.BICUBIC)
        picture.save(root / names[y[i]] / f"{i:06d}.jpg", quality=90)
    return root


def ours(root: Path, size: int, workers: int) -> int:
    data, _ = read_folder(root, image_size=size, test_size=0.2, seed=0, skip_bad=False,
                          workers=workers, progress=False)
    return len(data.x_train) + len(data.x_test)


def torchvision_loader(root: Path, size: int, src: int) -> int:
    steps: list[Callable] = [] if src == size else [transforms.Resize(size), transforms.CenterCrop(size)]
    folder = ImageFolder(str(root), transform=transforms.Compose([*steps, transforms.PILToTensor()]))
    n = 0
    for xb, _ in DataLoader(folder, batch_size=BATCH, num_workers=LOADER_WORKERS):
        n += len(xb)
    return n


def cpu_seconds() -> float:
    """CPU time of this process and of its ended children (the workers of both sides)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def warm(root: Path) -> None:
    for f in root.rglob("*.jpg"):
        f.read_bytes()


def race(name: str, root: Path, n: int, src: tuple[int, int], size: int, workers: int,
         rounds: int) -> dict[str, Any]:
    warm(root)
    sides: dict[str, Callable[[], int]] = {
        "vitlens": lambda: ours(root, size, workers),
        "torchvision": lambda: torchvision_loader(root, size, min(src))}
    times: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(rounds):
        for k in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            t, c = time.perf_counter(), cpu_seconds()
            got = sides[k]()
            times[k].append(time.perf_counter() - t)
            cpu[k].append(cpu_seconds() - c)
            if got != n:
                raise SystemExit(f"{k} read {got} of {n} pictures in {root}")
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    print(f"{name}: {n} pictures {src[0]}x{src[1]} -> {size}px: vitlens {rate['vitlens']:,.0f}/s, "
          f"torchvision {rate['torchvision']:,.0f}/s", flush=True)
    return {"set": name, "pictures": n, "source_px": list(src), "size": size,
            "vitlens_images_per_s": round(rate["vitlens"]),
            "torchvision_images_per_s": round(rate["torchvision"]),
            "vitlens_over_torchvision": round(rate["vitlens"] / rate["torchvision"], 3),
            "cpu_us_per_image": {k: round(1e6 * statistics.median(v) / n) for k, v in cpu.items()},
            "seconds": {k: [round(t, 3) for t in v] for k, v in times.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=20_000, help="32x32 JPEGs (0: none)")
    p.add_argument("--large", type=int, default=3_000, help="photo-sized JPEGs (0: none)")
    p.add_argument("--large-px", default="500x375", help="their width x height")
    p.add_argument("--large-size", type=int, default=64, help="px the large pictures are read at")
    p.add_argument("--cifar", type=Path, help="a CIFAR-10 python archive to take the pictures from")
    p.add_argument("--workers", type=int, default=0, help="read_folder's workers (0: every core)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", type=Path, help="keep the folders here (reused when complete)")
    p.add_argument("--out", type=Path, help="write the JSON here too")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vitlens-bench-folder-") as tmp:
        base = args.dir or Path(tmp)
        runs = []
        large = tuple(int(v) for v in args.large_px.split("x"))
        for name, n, (w, h), size in (("small", args.small, (32, 32), 32),
                                      ("large", args.large, large, args.large_size)):
            if n:
                root = make_folder(base / f"{name}-{w}x{h}-{n}", n, w, h, args.cifar)
                runs.append(race(name, root, n, (w, h), size, args.workers, args.rounds))
    result = {"cpu": cpu_model(), "cores": cpu_count(), "python": platform.python_version(),
              "pillow": Image.__version__, "torchvision": torchvision.__version__,
              "vitlens_workers": args.workers or cpu_count(), "torchvision_workers": LOADER_WORKERS,
              "source": str(args.cifar.name) if args.cifar else "smooth random noise", "runs": runs}
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
