"""The neutral record every source ends in: uint8 images (N, C, H, W), int64 labels and
the class names, for a training and a test split; saved and loaded as one uncompressed .npz.
"""
from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitlens.errors import VitlensError
from vitlens.io import atomic_path


class DataError(VitlensError):
    pass


@dataclass(frozen=True)
class ImageSet:
    x_train: np.ndarray  # (N, 3, 32, 32) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]


def save_arrays(data: ImageSet, out: Path) -> None:
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test,
                 y_test=data.y_test, classes=np.array(data.classes))


def load_arrays(path: str | Path) -> ImageSet:
    """Load what save_arrays wrote (uncompressed .npz: well under a second for all of CIFAR-10)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            return ImageSet(z["x_train"], z["y_train"], z["x_test"], z["y_test"],
                           [str(c) for c in z["classes"]])
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the download stage first (dvc repro download)") from None
    except (KeyError, ValueError, OSError, EOFError, TypeError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a dataset written by the download stage ({e}): rerun it "
                        "(dvc repro -f download)") from None

