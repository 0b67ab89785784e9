"""The download stage's work: the configured source (the CIFAR-10 or CIFAR-100 archive, or a
folder of the user's own pictures) -> the neutral record every later stage reads, and a
summary of it beside it (name, source, image size, digest, images per split and class)."""
from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

from vitlens.config import DataConfig, load_params
from vitlens.data.cifar import CIFAR10, cifar100, prepare
from vitlens.data.folder import read_folder
from vitlens.data.imageset import ImageSet, save_arrays
from vitlens.io import write_json


def folder_name(path: Path) -> str:
    """A dataset name from a folder's: letters, digits, `-`, `_` and `.` (a registry name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", path.resolve().name).strip("-") or "pictures"


def prepare_data(d: DataConfig, image_size: int, out: Path) -> tuple[ImageSet, dict[str, Any]]:
    """Read data.source into `out`; returns the record and what the folder reader reports
    (pictures skipped, identical files in train and test; empty for an archive)."""
    if d.source != "folder":
        layout = CIFAR10 if d.source == "cifar10" else cifar100(d.labels)
        return prepare(d.url, d.md5, out, retries=d.retries, timeout_s=d.timeout_s, layout=layout), {}
    path = Path(d.path)
    data, report = read_folder(path, image_size=image_size, test_size=d.test_size, seed=d.val_seed,
                               skip_bad=d.skip_bad)
    data = dataclasses.replace(data, name=folder_name(path), source=str(path.resolve()),
                               skipped=report["skipped"])
    save_arrays(data, out)
    return data, report


def run_download(params_path: str | Path, out: Path, summary_path: Path) -> dict[str, Any]:
    params = load_params(params_path)
    t0 = time.perf_counter()
    data, report = prepare_data(params.data, params.model.image_size, out)
    about = {**data.about(), "duplicates": report.get("duplicates", 0)}
    write_json(summary_path, about)
    skipped = f", {about['skipped']} unreadable skipped" if about["skipped"] else ""
    print(f"wrote {out}: {about['train']} train + {about['test']} test images, {about['classes']} "
          f"classes ({about['name']}, {about['image_size']} px){skipped} in {time.perf_counter() - t0:.1f}s")
    return about
