"""CIFAR-100 in the official layout (`cifar-100-python/train`, `test`, `meta`; fine and coarse
labels), written here small, through the same safe reader as CIFAR-10."""
import numpy as np
import pytest

from conftest import py2_pickle, write_cifar_archive
from vitlens.data.cifar import CIFAR10, cifar100, prepare, read_archive
from vitlens.data.imageset import DataError, load_arrays

FINE = [f"fine_{i:02d}" for i in range(100)]
COARSE = [f"coarse_{i:02d}" for i in range(20)]


def members(n_train: int = 200, n_test: int = 100, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def split(n: int, name: str) -> dict:
        fine = rng.permutation(np.arange(n) % 100)
        return {"batch_label": name, "fine_labels": [int(y) for y in fine],
                "coarse_labels": [int(y) // 5 for y in fine],
                "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "filenames": [f"img_{i}.png" for i in range(n)]}
    return {"train": split(n_train, "training batch 1 of 1"), "test": split(n_test, "testing batch 1 of 1"),
            "meta": {"fine_label_names": FINE, "coarse_label_names": COARSE}}


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "cifar-100-python.tar.gz"
    m = members()
    return path, write_cifar_archive(path, members=m, root="cifar-100-python"), m


@pytest.mark.parametrize("labels,names", [("fine", FINE), ("coarse", COARSE)])
def test_fine_or_coarse_classes_from_the_official_layout(archive, tmp_path, labels, names):
    path, md5, m = archive
    out = tmp_path / "images.npz"
    prepare(str(path), md5, out, retries=0, timeout_s=1, layout=cifar100(labels))
    data = load_arrays(out)
    assert data.classes == names
    assert np.array_equal(data.x_train, m["train"]["data"].reshape(-1, 3, 32, 32))
    assert np.array_equal(data.y_train, np.array(m["train"][f"{labels}_labels"]))
    assert np.array_equal(data.y_test, np.array(m["test"][f"{labels}_labels"]))
    assert data.x_test.shape == (100, 3, 32, 32) and data.y_train.dtype == np.int64


def test_the_checksum_is_checked_before_anything_is_opened(archive, tmp_path):
    path, _, _ = archive
    with pytest.raises(DataError, match="MD5 mismatch"):
        prepare(str(path), "0" * 32, tmp_path / "images.npz", retries=0, timeout_s=1, layout=cifar100())
    assert not (tmp_path / "images.npz").exists()


def test_a_cifar10_archive_is_not_taken_for_cifar100(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_archive(path)
    with pytest.raises(DataError, match="lacks the file"):
        read_archive(path, official=False, layout=cifar100())


@pytest.mark.parametrize("edit,says", [
    (lambda m: m["train"].update(fine_labels=[100] * 200), "fine_labels must be integers 0-99"),
    (lambda m: m["meta"].update(fine_label_names=FINE[:99]), "must be a list of 100 strings"),
    (lambda m: m["test"].update(data=np.zeros((100, 3071), np.uint8)), "shape \\(N, 3072\\)")])
def test_bad_labels_names_or_shapes_are_refused_in_one_line(tmp_path, edit, says):
    m = members()
    edit(m)
    path = tmp_path / "c100.tar.gz"
    write_cifar_archive(path, members=m, root="cifar-100-python")
    with pytest.raises(DataError, match=says):
        read_archive(path, official=False, layout=cifar100())


def test_an_unsafe_global_in_a_batch_is_refused(tmp_path):
    import os
    m = members()
    m["test"] = py2_pickle(os.system)
    path = tmp_path / "c100.tar.gz"
    write_cifar_archive(path, members=m, root="cifar-100-python")
    with pytest.raises(DataError, match="refused to load"):
        read_archive(path, official=False, layout=cifar100())


def test_each_source_has_its_own_official_url_and_md5():
    assert CIFAR10.url.endswith("cifar-10-python.tar.gz") and cifar100().url.endswith("cifar-100-python.tar.gz")
    assert cifar100().md5 == "eb9058c3a382ffc7106e4002c42a8d85" != CIFAR10.md5
