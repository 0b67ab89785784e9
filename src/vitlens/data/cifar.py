"""Fetch, verify and safely read the CIFAR-10 or CIFAR-100 python archive into compact arrays.

Nothing from the archive is trusted: the MD5 is checked before anything is opened, every
member must be a plain file or folder with a relative path (nothing is extracted to disk:
members are read into memory), batches are unpickled by an unpickler that admits only
numpy's array reconstruction besides plain dicts, lists, strings and numbers, and the arrays'
dtype and shape are checked after loading.
"""
from __future__ import annotations

import dataclasses
import io
import pickle
import tarfile
import tempfile
import urllib.parse
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from vitlens.data.fetch import download, local_path, verify_md5
from vitlens.data.imageset import DataError, ImageSet, save_arrays

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # the official archives'


@dataclass(frozen=True)
class Layout:
    """Where an official archive keeps its batches, labels and class names."""

    name: str  # the dataset's, as runs and registered models are named
    url: str
    md5: str  # of the official archive: only it must hold TRAIN_IMAGES + TEST_IMAGES
    root: str  # the folder inside the archive
    train: tuple[str, ...]  # batch files
    test: str
    meta: str
    labels: str  # the batches' key of the labels
    names: str  # the meta file's key of the class names
    classes: int


CIFAR10 = Layout("cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                 "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
                 tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                 "labels", "label_names", 10)
OFFICIAL_MD5 = CIFAR10.md5


def cifar100(labels: str = "fine") -> Layout:
    """CIFAR-100 with its 100 fine classes, or its 20 coarse superclasses."""
    assert labels in ("fine", "coarse"), f"labels must be fine or coarse, got {labels!r}"
    return Layout("cifar100" if labels == "fine" else "cifar100-coarse",
                  "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                  "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python", ("train",), "test", "meta",
                  f"{labels}_labels", f"{labels}_label_names", 100 if labels == "fine" else 20)


class _BatchUnpickler(pickle.Unpickler):
    """Admits only numpy's array reconstruction; any other global (os.system, ...) is refused."""

    _core = getattr(np, "_core", None) or np.core

    @staticmethod
    def _latin1_encode(text: str, encoding: str) -> bytes:
        # Python 3's protocol-2 pickles store array bytes as codecs.encode(text, "latin1").
        if encoding != "latin1":
            raise pickle.UnpicklingError(f"refused codec {encoding!r}")
        return text.encode("latin1")

    ALLOWED = {
        ("_codecs", "encode"): _latin1_encode,
        ("numpy.core.multiarray", "_reconstruct"): _core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None


def _unpickle(raw: bytes, name: str) -> dict:
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any failure means the member is not a batch
        raise DataError(f"{name} is not a valid CIFAR batch: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name} is not a valid CIFAR batch: expected a dict, got {type(obj).__name__}")
    return obj


def _check_member(m: tarfile.TarInfo) -> None:
    p = PurePosixPath(m.name)
    if p.is_absolute() or ".." in p.parts:
        raise DataError(f"archive member {m.name!r} has an absolute or parent-relative path, refused")
    if not (m.isfile() or m.isdir()):
        raise DataError(f"archive member {m.name!r} is a link or device, refused")


def _read_file(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    if f is None:  # _read_members admits only regular files here; this is for the type checker
        raise DataError(f"archive member {member.name!r} is not a regular file")
    return f.read()


def _read_members(archive: Path, layout: Layout) -> dict[str, bytes]:
    """Read the batch and meta members into memory after checking every member is safe."""
    wanted = {f"{layout.root}/{n}" for n in (*layout.train, layout.test, layout.meta)}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                _check_member(m)
            found = {m.name: m for m in members if m.name in wanted}
            missing = sorted(wanted - {n for n, m in found.items() if m.isfile()})
            if missing:
                raise DataError(f"{archive.name} lacks the file(s) {', '.join(missing)}")
            return {PurePosixPath(n).name: _read_file(tar, m) for n, m in found.items()}
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{archive.name} is not a readable tar.gz archive (truncated or corrupt?): {e}") from None


def _parse_batch(raw: bytes, name: str, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(raw, name)
    data, labels, n_classes = d.get("data"), d.get(layout.labels), layout.classes
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{name}: 'data' must be a uint8 array of shape (N, 3072), got {got}")
    if not isinstance(labels, list) or len(labels) != len(data):
        n = len(labels) if isinstance(labels, list) else type(labels).__name__
        raise DataError(f"{name}: expected {len(data)} labels, got {n}")
    if not all(type(v) is int and 0 <= v < n_classes for v in labels):
        raise DataError(f"{name}: {layout.labels} must be integers 0-{n_classes - 1}")
    return data.reshape(-1, 3, 32, 32), np.array(labels, dtype=np.int64)


def _parse_meta(raw: bytes, layout: Layout) -> list[str]:
    names = _unpickle(raw, layout.meta).get(layout.names)
    if not isinstance(names, list) or len(names) != layout.classes \
            or not all(isinstance(n, str) for n in names):
        raise DataError(f"{layout.meta}: {layout.names!r} must be a list of {layout.classes} strings")
    return names


def read_archive(archive: Path, *, official: bool, layout: Layout = CIFAR10) -> ImageSet:
    raw = _read_members(archive, layout)
    train = [_parse_batch(raw[n], n, layout) for n in layout.train]
    x_test, y_test = _parse_batch(raw[layout.test], layout.test, layout)
    data = ImageSet(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                    x_test, y_test, _parse_meta(raw[layout.meta], layout), name=layout.name)
    if official and (len(data.x_train), len(data.x_test)) != (TRAIN_IMAGES, TEST_IMAGES):
        raise DataError(f"the official archive must hold 50000 + 10000 images, got "
                        f"{len(data.x_train)} + {len(data.x_test)}")
    return data


def prepare(url: str, md5: str, out: Path, *, retries: int, timeout_s: float,
            layout: Layout = CIFAR10) -> ImageSet:
    """Fetch (or locate) the archive, verify its MD5, parse it safely, write `out` atomically.
    An empty `url` or `md5` is the layout's official one."""
    url, md5 = url or layout.url, md5 or layout.md5
    src = local_path(url)
    if src is not None:
        if not src.is_file():
            raise DataError(f"data.url={url!r}: no such file {src}")
        return _convert(src, md5, out, layout, url)
    with tempfile.TemporaryDirectory(prefix="vitlens-download-") as d:
        archive = Path(d) / Path(urllib.parse.urlparse(url).path).name
        download(url, archive, retries=retries, timeout_s=timeout_s)
        return _convert(archive, md5, out, layout, url)


def _convert(archive: Path, md5: str, out: Path, layout: Layout, url: str) -> ImageSet:
    verify_md5(archive, md5)
    data = read_archive(archive, official=md5.lower() == layout.md5, layout=layout)
    data = dataclasses.replace(data, source=url)
    save_arrays(data, out)
    return data

