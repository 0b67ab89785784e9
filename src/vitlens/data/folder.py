"""The user's own labelled pictures -> an ImageSet: `read_folder(path, ...)`.

    pets/cat/001.jpg, pets/dog/a.png, ...                       split here, per class, seeded
    pets/train/cat/001.jpg, ..., pets/test/cat/101.jpg, ...     the user's own split

Every picture, whatever its format (PNG, JPEG, BMP, GIF, WebP, TIFF), size and mode (grey,
16-bit grey, palette, transparent, EXIF-rotated), becomes the same uint8 RGB square that
`vitlens predict` and `vitlens serve` make of it (`data.images.load_image`): turned upright,
laid on white, its central square cut out and resized (Lanczos) to image_size x image_size.
Grey pictures become three equal channels: folders mix modes, and the model, predict and
serve take RGB. A picture is decoded on every core straight into the final arrays.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from vitlens.data.decode import Decoded, compact, decode_all
from vitlens.data.imageset import DataError, ImageSet
from vitlens.data.scan import Found, listing, scan

SPLITS = ("train", "test")


def read_folder(path: Path, *, image_size: int, test_size: float, seed: int, skip_bad: bool,
                workers: int = 0, progress: bool = True) -> tuple[ImageSet, dict]:
    """The pictures under `path` as an ImageSet of uint8 (N, 3, image_size, image_size) images,
    and a summary: {"layout", "image_size", "train", "test", "per_class": {class: {"train",
    "test"}}, "skipped", "duplicates"}.

    Layouts: `<class>/...` alone is split per class: the seeded choice of a `test_size` share
    of each class's pictures is held out (one at least, never all, when a class has two or
    more); `train/<class>/...` with `test/<class>/...` (or val/, validation/) is used as it is
    and `test_size` is not used. Classes are the folder names, sorted; labels index them.
    Hidden files and folders and files without a picture's suffix are passed over.

    Each picture is decoded as predict and serve decode it: turned upright (EXIF), laid on
    white, its central square cut out, then resized (Lanczos) to image_size x image_size, RGB
    (grey: three equal channels).

    One DataError line, naming the first few folders or files and their count, for a missing
    or empty folder, a single class, an empty class folder, a class on one side of train/ and
    test/ only, or unreadable pictures (with `skip_bad`, these are left out and counted).
    Byte-identical files in train and test are counted and get a warning line on stderr.
    Decodes on `workers` processes (0: every core) with a progress bar; reads, never writes.
    """
    if image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
    found = scan(Path(path), test_size=test_size, seed=seed)
    root = found.root
    arrays = decode_all([[os.path.join(root, f) for f in found.files[s]] for s in SPLITS], image_size,
                        workers=workers, progress=progress, desc=f"reading {root.name or root}")
    x = {s: a for s, (a, _) in zip(SPLITS, arrays)}
    decoded = {s: d for s, (_, d) in zip(SPLITS, arrays)}
    bad = sorted(f"{found.files[s][i]} ({why})" for s in SPLITS for i, why in decoded[s].reasons.items())
    if bad and not skip_bad:
        raise DataError(f"{len(bad)} unreadable picture(s) in {root}: {listing(bad)}: fix or remove "
                        "them, or set data.skip_bad: true to leave them out")
    if bad:
        print(f"warning: skipped {len(bad)} unreadable picture(s) in {root}: {listing(bad)}",
              file=sys.stderr)
    files = {s: list(found.files[s]) for s in SPLITS}
    if found.layout == "classes":
        for k in range(len(found.classes)):
            rebalance(k, found, x, decoded, files)
    check_left(found, decoded)
    ys = {s: found.labels[s][decoded[s].ok] for s in SPLITS}
    xs = {s: compact(x[s], decoded[s].ok) for s in SPLITS}
    duplicates = count_duplicates(root, decoded, files)
    data = ImageSet(xs["train"], ys["train"], xs["test"], ys["test"], list(found.classes))
    per_class = {c: {s: int((ys[s] == k).sum()) for s in SPLITS} for k, c in enumerate(found.classes)}
    return data, {"layout": found.layout, "image_size": image_size, "train": len(ys["train"]),
                  "test": len(ys["test"]), "per_class": per_class, "skipped": len(bad),
                  "duplicates": duplicates}


def rebalance(k: int, found: Found, x: dict[str, np.ndarray], decoded: dict[str, Decoded],
              files: dict[str, list[str]]) -> None:
    """With unreadable pictures left out, class k of a folder split here keeps the split's
    promise: a training picture whenever it has one readable, a test picture whenever it has
    two. A readable picture moves across, into a row an unreadable one left free."""
    def rows(split: str, ok: bool) -> np.ndarray:
        return np.flatnonzero((found.labels[split] == k) & (decoded[split].ok == ok))

    for src, dst, least in (("test", "train", 1), ("train", "test", 2)):
        free, have = rows(dst, False), rows(src, True)
        if not len(rows(dst, True)) and len(free) and len(have) >= least:
            i, j = have[-1], free[0]
            x[dst][j] = x[src][i]
            decoded[dst].digests[j] = decoded[src].digests[i]
            files[dst][j] = files[src][i]
            decoded[dst].ok[j], decoded[src].ok[i] = True, False


def check_left(found: Found, decoded: dict[str, Decoded]) -> None:
    """After skipping: every class still has a readable training picture (and a test one in
    the user's own train/test split), and some class has a test picture."""
    sides = SPLITS if found.layout == "train/test" else ("train",)
    empty = [f"{s}/{c}" if found.layout == "train/test" else c for s in sides
             for k, c in enumerate(found.classes) if not decoded[s].ok[found.labels[s] == k].any()]
    if empty:
        raise DataError(f"{len(empty)} class folder(s) in {found.root} with no readable picture left: "
                        f"{listing(empty)}: add readable pictures or remove the folder")
    if not decoded["test"].ok.any():
        raise DataError(f"no picture of {found.root} is left to test on: every class has a single "
                        "readable picture, and one is held out only from a class of two or more")


def count_duplicates(root: Path, decoded: dict[str, Decoded], files: dict[str, list[str]]) -> int:
    """How many test pictures are byte for byte a training picture; a warning names a few."""
    train = {decoded["train"].digests[i]: i for i in np.flatnonzero(decoded["train"].ok)}
    pairs = [(i, train[decoded["test"].digests[i]]) for i in np.flatnonzero(decoded["test"].ok)
             if decoded["test"].digests[i] in train]
    if pairs:
        named = [f"{files['test'][i]} = {files['train'][j]}" for i, j in pairs]
        print(f"warning: {len(pairs)} test picture(s) in {root} are byte-identical to training "
              f"pictures: {listing(named)}: the test accuracy overstates the model on new pictures",
              file=sys.stderr)
    return len(pairs)
