"""The neutral record every source ends in: uint8 images (N, C, H, W), int64 labels and
the class names, for a training and a test split, with the dataset's name and where it came
from; saved and loaded as one uncompressed .npz. Nothing after the first stage reads more."""
from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitlens.errors import VitlensError
from vitlens.io import atomic_path


class DataError(VitlensError):
    pass


@dataclass(frozen=True)
class ImageSet:
    x_train: np.ndarray  # (N, 3, S, S) uint8
    y_train: np.ndarray  # (N,) int64, indices into classes
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    name: str = "dataset"  # cifar10, cifar100, the folder's name: what runs and models are named by
    source: str = ""  # the archive's URL or the folder's path, for the record
    skipped: int = 0  # unreadable pictures left out (data.skip_bad)

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    def digest(self) -> str:
        """SHA-256 of every image, label and class name, in order: the same data gives the
        same digest (MLflow's own digest of numpy data hashes only the first rows)."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str((a.dtype, a.shape)).encode())
            h.update(np.ascontiguousarray(a).data)
        h.update("\n".join(self.classes).encode())
        return h.hexdigest()

    def about(self) -> dict[str, Any]:
        """What MLflow records of the dataset and a user reads: name, source, digest, image
        size, images per split and per class, pictures skipped."""
        n = len(self.classes)
        train, test = np.bincount(self.y_train, minlength=n), np.bincount(self.y_test, minlength=n)
        return {"name": self.name, "source": self.source, "digest": self.digest(),
                "image_size": self.image_size, "classes": n, "train": len(self.y_train),
                "test": len(self.y_test), "skipped": self.skipped,
                "per_class": {c: {"train": int(a), "test": int(b)} for c, a, b in zip(self.classes, train, test)}}


def save_arrays(data: ImageSet, out: Path) -> None:
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test,
                 y_test=data.y_test, classes=np.array(data.classes), name=np.array(data.name),
                 source=np.array(data.source), skipped=np.array(data.skipped))


def mapped(path: str | Path, member: str) -> np.ndarray:
    """A read-only memory map of the array `member` of an uncompressed .npz: its pages are
    read from the file when touched and the kernel may drop them again, so the training set is
    never held twice (the train/validation split makes the one copy in memory)."""
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        info = zf.getinfo(f"{member}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{member} is compressed")
        f.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
        f.seek(info.header_offset + 30 + int(name_len) + int(extra_len))
        fmt = np.lib.format
        read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        shape, fortran, dtype = read[fmt.read_magic(f)](f)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C",
                         offset=f.tell())


def load_arrays(path: str | Path) -> ImageSet:
    """Load what save_arrays wrote (uncompressed .npz: well under a second for all of CIFAR-10);
    the training images memory-mapped (`mapped`), the rest in memory."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            about: dict[str, Any] = {k: str(z[k]) for k in ("name", "source") if k in z}
            if "skipped" in z:  # files of older versions lack name, source and skipped
                about["skipped"] = int(z["skipped"])
            return ImageSet(mapped(path, "x_train"), z["y_train"], z["x_test"], z["y_test"],
                            [str(c) for c in z["classes"]], **about)
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the download stage first (dvc repro download)") from None
    except (KeyError, ValueError, OSError, EOFError, TypeError, zlib.error, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is not a dataset written by the download stage ({e}): rerun it "
                        "(dvc repro -f download)") from None

