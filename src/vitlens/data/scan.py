"""Find the pictures of a folder of labelled pictures, as torchvision's ImageFolder users have
them: `<class>/...` alone, or `train/<class>/...` beside `test/<class>/...` (`val/` or
`validation/` may stand for `test/`). Class names are the folder names, sorted; a class folder's
subfolders are searched too.

Hidden files and folders (`.DS_Store`, `._photo.jpg`, `.git/`), `__MACOSX/` and files without
a picture's suffix (`Thumbs.db`, `notes.txt`) are not pictures and are passed over in silence,
as are files lying directly in the root (they belong to no class). A layout that cannot be
read as classes is one DataError line naming the folders; nothing is decoded yet.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitlens.data.images import SUFFIXES
from vitlens.data.imageset import DataError

HELD_OUT = ("test", "val", "validation")  # the held-out split's folder, beside train/
SHOWN = 3  # names an error line shows before "and N more"
SUFFIXES_TEXT = " ".join(SUFFIXES)


def listing(names: list[str], shown: int = SHOWN) -> str:
    """`a, b, c and 4 more`: the first few names of a list, on one line."""
    text = ", ".join(n.replace("\n", "\\n") for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


@dataclass(frozen=True)
class Found:
    """The pictures of a folder, each split's in class order, then by path: `files[split]`
    paths relative to `root`, `labels[split]` int64 indices into `classes`."""
    root: Path
    layout: str  # "classes" (one folder per class, split here) or "train/test"
    classes: list[str]
    files: dict[str, list[str]]  # "train", "test"
    labels: dict[str, np.ndarray]


def visible(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


def pictures(folder: Path) -> list[str]:
    """The pictures under `folder`, its subfolders too, as sorted paths relative to it."""
    out = []
    for here, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if visible(d)]
        rel = Path(here).relative_to(folder).as_posix()
        prefix = "" if rel == "." else f"{rel}/"  # strings, not a Path per file: 60,000 files
        out += [prefix + n for n in names if visible(n) and os.path.splitext(n)[1].lower() in SUFFIXES]
    return sorted(out)


def subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if visible(e.name) and e.is_dir())


def class_pictures(root: Path, top: str) -> dict[str, list[str]]:
    """{class: pictures relative to root} of the class folders in root/top; an empty class
    folder is an error naming it."""
    base = root / top if top else root
    found = {c: [f"{top}/{c}/{p}" if top else f"{c}/{p}" for p in pictures(base / c)]
             for c in subfolders(base)}
    empty = [f"{top}/{c}" if top else c for c, files in found.items() if not files]
    if empty:
        raise DataError(f"{len(empty)} class folder(s) in {root} without pictures ({SUFFIXES_TEXT}): "
                        f"{listing(empty)}: add pictures or remove the folder")
    return found



def split_of(name: str, n: int, test_size: float, seed: int) -> np.ndarray:
    """Which of a class's n pictures (in path order) are held out: the seeded choice of
    round(test_size * n), at least one and never all when n >= 2. The class's name joins the
    seed, so that a class's split does not move when other classes gain or lose pictures."""
    n_test = min(max(round(test_size * n), 1), n - 1) if n >= 2 else 0
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    held = np.zeros(n, bool)
    held[rng.permutation(n)[:n_test]] = True
    return held


def scan(root: Path, *, test_size: float, seed: int) -> Found:
    """The pictures of `root` in either layout, split; DataError for a layout that is not one."""
    if not 0 < test_size < 1:
        raise DataError(f"test_size must be between 0 and 1 (the share held out), got {test_size}")
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give the folder of class folders")
    top = subfolders(root)
    held = [t for t in HELD_OUT if t in top]
    if "train" in top and held:
        if len(top) > 2:
            others = [t for t in top if t not in ("train", held[0])]
            raise DataError(f"{root} holds train/ and {held[0]}/ and also {listing(others)}: with "
                            f"train/ and {held[0]}/, every class folder goes inside both")
        return found_in_splits(root, held[0])
    if len(top) == 1 and top[0] in ("train", *HELD_OUT):
        raise DataError(f"{root} holds {top[0]}/ alone: give train/<class>/ and test/<class>/, "
                        "or the class folders alone")
    found = class_pictures(root, "")
    check_classes(root, list(found))
    files: dict[str, list[str]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    for k, (name, paths) in enumerate(found.items()):
        for path, is_test in zip(paths, split_of(name, len(paths), test_size, seed)):
            split = "test" if is_test else "train"
            files[split].append(path)
            labels[split].append(k)
    return Found(root, "classes", list(found), files,
                 {s: np.array(v, np.int64) for s, v in labels.items()})


def check_classes(root: Path, classes: list[str]) -> None:
    if not classes:
        raise DataError(f"{root} holds no class folders: put the pictures in {root}/<class>/ "
                        "(or train/<class>/ and test/<class>/)")
    if len(classes) == 1:
        raise DataError(f"{root} holds a single class ({classes[0]}): a classifier needs two or more "
                        "class folders")


def found_in_splits(root: Path, held: str) -> Found:
    """train/<class>/ and <held>/<class>/: the same classes on both sides."""
    train, test = class_pictures(root, "train"), class_pictures(root, held)
    for have, lack, side in ((train, test, held), (test, train, "train")):
        missing = [c for c in have if c not in lack]
        if missing:
            raise DataError(f"{len(missing)} class(es) without pictures in {root / side}: "
                            f"{listing(missing)}: every class needs pictures in both train/ and {held}/")
    classes = list(train)
    check_classes(root, classes)
    files = {"train": [p for c in classes for p in train[c]], "test": [p for c in classes for p in test[c]]}
    labels = {s: np.array([k for k, c in enumerate(classes) for _ in side[c]], np.int64)
              for s, side in (("train", train), ("test", test))}
    return Found(root, "train/test", classes, files, labels)
