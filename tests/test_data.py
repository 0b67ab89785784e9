"""The on-device data pipeline: train/validation split, shuffled shards, crop/flip, normalise."""
import numpy as np
import pytest
import torch

from vitlens.data.augment import CropFlip
from vitlens.data.imageset import ImageSet, load_arrays
from vitlens.data.normalize import Normalizer, channel_stats
from vitlens.data.split import batch_indices, split_train_val


def fake_cifar(n: int) -> ImageSet:
    x = np.arange(n, dtype=np.uint8).repeat(3 * 32 * 32).reshape(n, 3, 32, 32)
    return ImageSet(x, np.arange(n) % 10, x[:10], np.arange(10), [str(i) for i in range(10)])


def test_split_train_val_is_disjoint_and_seeded():
    data = fake_cifar(200)
    (xtr, ytr), (xval, yval) = split_train_val(data, val_size=50, seed=3)
    train_ids, val_ids = set(xtr[:, 0, 0, 0].tolist()), set(xval[:, 0, 0, 0].tolist())
    assert len(val_ids) == 50 and len(train_ids) == 150
    assert not train_ids & val_ids and train_ids | val_ids == set(range(200))
    again = split_train_val(data, val_size=50, seed=3)[1][0]
    other = split_train_val(data, val_size=50, seed=4)[1][0]
    assert np.array_equal(again, xval) and not np.array_equal(other, xval)


def test_split_subset_keeps_the_validation_set():
    data = fake_cifar(200)
    (xtr, _), (xval, _) = split_train_val(data, val_size=50, seed=3, subset=20)
    full_val = split_train_val(data, val_size=50, seed=3)[1][0]
    assert len(xtr) == 20 and np.array_equal(xval, full_val)
    assert not set(xtr[:, 0, 0, 0].tolist()) & set(xval[:, 0, 0, 0].tolist())


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_rank_shards_are_disjoint_and_cover_each_batch(world):
    n, batch = 100, 24  # 4 full batches; the last 4 images are dropped
    shards = [list(batch_indices(n, batch, torch.Generator().manual_seed(0), rank=r, world=world))
              for r in range(world)]
    assert all(len(s) == n // batch for s in shards)
    seen = []
    for b in range(n // batch):
        parts = [shards[r][b].tolist() for r in range(world)]
        together = [i for p in parts for i in p]
        assert len(together) == len(set(together)) == batch, "shards overlap or miss images"
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        seen += together
    assert len(set(seen)) == len(seen) == n - n % batch
    single = torch.cat(list(batch_indices(n, batch, torch.Generator().manual_seed(0))))
    assert sorted(seen) == sorted(single.tolist())  # the same epoch, split among ranks


def test_normalizer_uses_the_training_statistics():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    out = Normalizer([0.1, 0.2, 0.5], [0.5, 0.25, 0.5])(x)
    want = (torch.tensor([0.0, 0.2, 1.0]) - torch.tensor([0.1, 0.2, 0.5])) / torch.tensor([0.5, 0.25, 0.5])
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], want, atol=1e-6)


def crop_flip(x: torch.Tensor, *, padding: int, flip: bool, seed: int) -> torch.Tensor:
    return CropFlip(x, padding=padding, flip=flip)(torch.arange(len(x)),
                                                   torch.Generator().manual_seed(seed))


def test_crop_flip_moves_whole_images_only():
    # Disjoint pixel values per image (1-63, 64-126, ...): a pixel taken from another image,
    # or from the wrong place past a row's end, shows up as a foreign value.
    x = torch.stack([torch.randint(1 + 63 * i, 64 + 63 * i, (3, 32, 32)) for i in range(4)])
    x = x.to(torch.uint8)
    assert torch.equal(crop_flip(x, padding=0, flip=False, seed=0), x)
    out = crop_flip(x, padding=4, flip=True, seed=0)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i in range(4):
        own = (out[i] == 0) | ((out[i] >= 1 + 63 * i) & (out[i] < 64 + 63 * i))
        assert own.all(), f"image {i} holds pixels of another image"
        assert (out[i] != 0).sum() >= 24 * 24 * 3  # a shift of at most 4 px keeps most pixels


def crops_of(image: torch.Tensor) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    return [padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]


def test_crop_is_a_shift_of_the_padded_image():
    x = torch.randint(1, 255, (64, 3, 32, 32), dtype=torch.uint8)
    out = crop_flip(x, padding=4, flip=False, seed=1)
    shifts = set()
    for i in range(64):
        hits = [k for k, c in enumerate(crops_of(x[i])) if torch.equal(c, out[i])]
        assert hits, f"image {i} is not a crop of its padded self"
        shifts.update(hits)
    assert len(shifts) > 20  # the shifts vary: 81 are possible


def test_a_reflect_fill_crops_the_mirrored_border_and_never_shows_black():
    x = torch.randint(1, 255, (64, 3, 32, 32), dtype=torch.uint8)
    out = CropFlip(x, padding=4, flip=True, fill="reflect")(torch.arange(64), torch.Generator().manual_seed(1))
    assert (out != 0).all(), "no black border"
    shifted = 0
    for i in range(64):
        padded = torch.nn.functional.pad(x[i], (4, 4, 4, 4), mode="reflect")
        crops = [padded[:, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        hits = [k for k, c in enumerate(crops) if torch.equal(c, out[i]) or torch.equal(c.flip(-1), out[i])]
        assert hits, f"image {i} is not a crop of its reflect-padded self"
        shifted += 40 not in hits  # 40: the centre crop, no shift
    assert shifted > 48
    zero = CropFlip(x, padding=4, flip=False)(torch.arange(64), torch.Generator().manual_seed(1))
    assert (zero == 0).any(), "the default still pads black"


def test_flip_mirrors_a_crop():
    x = torch.randint(1, 255, (32, 3, 32, 32), dtype=torch.uint8)
    out = crop_flip(x, padding=4, flip=True, seed=2)
    flipped = 0
    for i in range(32):
        crops = crops_of(x[i])
        plain = any(torch.equal(c, out[i]) for c in crops)
        mirrored = any(torch.equal(c.flip(-1), out[i]) for c in crops)
        assert plain or mirrored, f"image {i} is neither a crop nor a mirrored crop"
        flipped += mirrored and not plain
    assert 0 < flipped < 32  # both kinds occur


def test_crop_flip_picks_the_indexed_images():
    x = torch.randint(1, 255, (10, 3, 32, 32), dtype=torch.uint8)
    idx = torch.tensor([7, 2, 2, 9])
    out = CropFlip(x, padding=0, flip=False)(idx, torch.Generator().manual_seed(0))
    assert torch.equal(out, x[idx])
    out = CropFlip(x, padding=4, flip=True)(idx, torch.Generator().manual_seed(0))
    for i, j in enumerate(idx.tolist()):
        assert any(torch.equal(c, out[i]) or torch.equal(c.flip(-1), out[i])
                   for c in crops_of(x[j]))


def test_the_training_images_are_mapped_not_read(tmp_path):
    """load_arrays maps x_train from the file (the split makes the one copy in memory)."""
    from vitlens.data.imageset import save_arrays
    data = fake_cifar(64)
    save_arrays(data, tmp_path / "d.npz")
    loaded = load_arrays(tmp_path / "d.npz")
    assert isinstance(loaded.x_train, np.memmap) and not loaded.x_train.flags.writeable
    np.testing.assert_array_equal(loaded.x_train, data.x_train)
    np.testing.assert_array_equal(loaded.x_test, data.x_test)


def test_channel_stats_never_copy_the_images_as_floats(monkeypatch):
    import tracemalloc

    from vitlens.data import normalize
    monkeypatch.setattr(normalize, "STATS_CHUNK", 1 << 18)  # chunks of 2 MB of floats
    x = np.random.default_rng(0).integers(0, 256, (20_000, 3, 16, 16), dtype=np.uint8)  # 15 MB
    flat = x.transpose(1, 0, 2, 3).reshape(3, -1) / 255
    tracemalloc.start()
    mean, std = channel_stats(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.nbytes, f"{peak / 1e6:.0f} MB for {x.nbytes / 1e6:.0f} MB of images"  # float64: 8x
    np.testing.assert_allclose(mean, flat.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(axis=1), rtol=1e-12)
