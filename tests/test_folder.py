"""read_folder: a folder of the user's own labelled pictures -> an ImageSet, on tiny folders made
with PIL. Both layouts, the per-class seeded split, every format and mode, junk passed over, one
error line per bad folder (and nothing written), skip_bad, duplicates, and the parallel decode
giving exactly what load_image gives one picture at a time."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitlens.data import decode
from vitlens.data.decode import compact, decode_all
from vitlens.data.folder import read_folder
from vitlens.data.images import KINDS, BadImage, load_image
from vitlens.data.imageset import DataError

SIZE = 8


def read(root: Path, **kw) -> tuple:
    args = dict(image_size=SIZE, test_size=0.25, seed=0, skip_bad=False, workers=2, progress=False)
    return read_folder(root, **{**args, **kw})


def solid(path: Path, colour, size=(12, 10), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, **save)
    return path


def grey_folder(root: Path, counts: dict[str, int]) -> Path:
    """root/<class>/<i>.png, solid grey: the level is 10 * i + the class's index in `counts`,
    so that a picture's pixels say which file it was."""
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            solid(root / name / f"{i:02d}.png", 10 * i + k, mode="L")
    return root


def levels(x: np.ndarray) -> list[int]:
    return sorted(int(v) for v in x[:, 0, 0, 0])


def tree(root: Path) -> list[tuple[str, int, int]]:
    """Every file under root, its size and mtime: what 'nothing is written' compares."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*"))


def refused(root: Path, **kw) -> str:
    """read_folder's one-line DataError for root, having checked it wrote nothing."""
    before = tree(root.parent)
    with pytest.raises(DataError) as e:
        read(root, **kw)
    assert tree(root.parent) == before
    message = str(e.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def test_class_folders_become_sorted_classes_and_labels(tmp_path):
    colours = {"dog": (0, 255, 0), "cat": (255, 0, 0), "eagle": (0, 0, 255)}
    for name, colour in colours.items():
        for i in range(4):
            solid(tmp_path / name / f"{i}.png", colour, size=(12 + i, 10))  # not byte-identical
    data, summary = read(tmp_path)
    assert data.classes == ["cat", "dog", "eagle"]
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert x.dtype == np.uint8 and x.shape[1:] == (3, SIZE, SIZE) and y.dtype == np.int64
        got = [tuple(int(v) for v in img[:, 0, 0]) for img in x]
        assert got == [colours[data.classes[k]] for k in y]
    assert summary == {"layout": "classes", "image_size": SIZE, "train": 9, "test": 3,
                       "per_class": {c: {"train": 3, "test": 1} for c in data.classes},
                       "skipped": 0, "duplicates": 0}


def test_the_users_own_train_test_split_is_kept(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for name, level in (("b", 200), ("a", 100)):
            for i in range(n):
                solid(tmp_path / split / name / f"{i}.png", level + i, mode="L")
    data, summary = read(tmp_path, test_size=0.9)  # not used with train/ and test/
    assert data.classes == ["a", "b"]
    assert levels(data.x_train) == [100, 101, 102, 200, 201, 202]
    assert levels(data.x_test) == [100, 101, 200, 201]
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1] and data.y_test.tolist() == [0, 0, 1, 1]
    assert summary["layout"] == "train/test" and (summary["train"], summary["test"]) == (6, 4)
    (tmp_path / "test").rename(tmp_path / "val")  # timm's name for it
    assert read(tmp_path)[1]["per_class"] == {"a": {"train": 3, "test": 2}, "b": {"train": 3, "test": 2}}


def test_the_split_is_per_class_seeded_and_keeps_a_test_picture(tmp_path):
    root = grey_folder(tmp_path / "pics", {"many": 20, "two": 2, "one": 1})
    data, summary = read(root, test_size=0.25, seed=1)
    assert summary["per_class"] == {"many": {"train": 15, "test": 5}, "one": {"train": 1, "test": 0},
                                    "two": {"train": 1, "test": 1}}
    again, _ = read(root, test_size=0.25, seed=1)
    other, _ = read(root, test_size=0.25, seed=2)
    many = data.classes.index("many")
    assert levels(again.x_test) == levels(data.x_test)
    assert levels(other.x_test[other.y_test == many]) != levels(data.x_test[data.y_test == many])
    both = levels(data.x_train[data.y_train == many]) + levels(data.x_test[data.y_test == many])
    assert sorted(both) == [10 * i for i in range(20)]  # every picture once, none twice
    # a class's split does not move when another class changes
    grey_folder(root, {"many": 20, "two": 2, "one": 1, "zzz": 3})
    more, _ = read(root, test_size=0.25, seed=1)
    assert levels(more.x_test[more.y_test == many]) == levels(data.x_test[data.y_test == many])


def test_every_format_and_mode_becomes_the_same_rgb_square(tmp_path):
    d = tmp_path / "pics" / "all"
    solid(d / "rgb.png", (10, 20, 30), size=(30, 12))
    solid(d / "rgb.BMP", (10, 20, 30))
    solid(d / "lossless.webp", (10, 20, 30), lossless=True)
    solid(d / "rgb.tiff", (10, 20, 30))
    solid(d / "grey.tif", 77, mode="L")
    Image.fromarray(np.full((10, 12), 0x8040, np.uint16)).save(d / "grey16.png")  # I;16
    Image.fromarray(np.full((10, 12), 0x8040, np.uint16)).save(d / "grey16.tif")
    palette = Image.new("P", (12, 10), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.save(d / "palette.gif")
    palette.save(d / "clear.gif", transparency=1)  # the one colour is transparent: white
    solid(d / "clear.png", (0, 0, 0, 0), mode="RGBA")
    solid(d / "half.png", (255, 0, 0, 128), mode="RGBA")
    solid(d / "photo.JPG", (10, 20, 30), quality=95)
    frames = [Image.new("RGB", (12, 10), c) for c in ((10, 20, 30), (200, 0, 0))]
    frames[0].save(d / "moving.webp", save_all=True, append_images=frames[1:], lossless=True)
    upright = np.zeros((16, 16, 3), np.uint8)
    upright[:8] = (255, 0, 0)  # red above blue
    upright[8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn me 90 degrees clockwise to show me"
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(d / "turned.jpg", exif=exif.tobytes(),
                                                                       quality=95)
    solid(tmp_path / "pics" / "other" / "x.png", 0)
    data, _ = read(tmp_path / "pics", image_size=16, test_size=0.01)
    x = np.concatenate([data.x_train, data.x_test])[np.concatenate([data.y_train, data.y_test]) == 0]
    assert x.shape == (14, 3, 16, 16)
    # every file is one row, decoded as load_image decodes it (rows of both splits: as a multiset)
    assert sorted(img.tobytes() for img in x) == sorted(load(f).tobytes() for f in d.iterdir())
    for n in ("rgb.png", "rgb.BMP", "lossless.webp", "rgb.tiff", "palette.gif", "moving.webp"):
        assert (load(d / n).transpose(1, 2, 0) == (10, 20, 30)).all(), n
    assert (load(d / "grey.tif") == 77).all()
    assert (load(d / "grey16.png") == 0x80).all() and (load(d / "grey16.tif") == 0x80).all()
    assert (load(d / "clear.gif") == 255).all() and (load(d / "clear.png") == 255).all()
    assert np.abs(load(d / "half.png").transpose(1, 2, 0).astype(int) - (255, 127, 127)).max() <= 1
    assert np.abs(load(d / "photo.JPG").transpose(1, 2, 0).astype(int) - (10, 20, 30)).max() <= 4
    turned = load(d / "turned.jpg").astype(int)
    assert (turned[0, :6] > 200).all() and (turned[2, :6] < 60).all()  # red on top
    assert (turned[2, 10:] > 200).all() and (turned[0, 10:] < 60).all()  # blue below


def load(path: Path, size: int = 16) -> np.ndarray:
    return load_image(path, size)[0].transpose(2, 0, 1)


def test_hidden_and_junk_files_are_passed_over(tmp_path):
    root = grey_folder(tmp_path / "pics", {"cat": 4, "dog": 4})
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cat" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "dog" / "notes.txt").write_text("not a picture")
    (root / "dog" / "._00.png").write_bytes(b"\0\5\x16\7 AppleDouble resource fork")
    solid(root / "dog" / ".hidden" / "x.png", 255)
    solid(root / ".git" / "y.png", 255)
    solid(root / "__MACOSX" / "cat" / "._01.png", 255)
    (root / "README.md").write_text("my pets")
    solid(root / "loose.png", 255)  # in no class folder
    solid(root / "dog" / "more" / "04.png", 14, mode="L")  # a class's subfolders count
    data, summary = read(root)
    assert data.classes == ["cat", "dog"] and summary["skipped"] == 0
    assert summary["train"] + summary["test"] == 9
    assert 255 not in levels(np.concatenate([data.x_train, data.x_test]))


def test_unreadable_pictures_are_one_line_naming_them(tmp_path):
    root = grey_folder(tmp_path / "pics", {"cat": 3, "dog": 3})
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    (root / "cat" / "cut.png").write_bytes(whole[:len(whole) // 2])  # truncated
    message = refused(root)
    assert message.startswith(f"1 unreadable picture(s) in {root}: cat/cut.png (unreadable")
    assert "data.skip_bad" in message
    (root / "dog" / "text.jpg").write_text("hello")
    (root / "dog" / "empty.gif").write_bytes(b"")
    solid(root / "dog" / "icon.tif", 0, format="ICO")  # a picture, not one of ours
    for i in range(3):
        (root / "dog" / f"z{i}.webp").write_bytes(b"RIFF")
    message = refused(root)
    assert message.startswith("7 unreadable picture(s)") and message.endswith("to leave them out")
    assert "cat/cut.png" in message and "dog/empty.gif (empty file)" in message and "and 4 more" in message


def test_folders_that_are_not_classes_are_one_line_naming_them(tmp_path):
    root = tmp_path / "pics"
    assert refused(root) == f"{root}: no such folder"
    root.mkdir()
    assert "holds no class folders" in refused(root)
    grey_folder(root, {"cat": 2})
    assert refused(root) == (f"{root} holds a single class (cat): a classifier needs two or more "
                             "class folders")
    (root / "dog").mkdir()
    (root / "dog" / "notes.txt").write_text("only junk")
    (root / "emu").mkdir()
    assert refused(root).startswith(f"2 class folder(s) in {root} without pictures (.png .jpg")
    assert "dog, emu: add pictures" in refused(root)
    assert "test_size must be between 0 and 1" in refused(root, test_size=1.0)
    for name in ("dog", "emu"):
        solid(root / name / "00.png", 1, mode="L")
    (root / "cat" / "01.png").unlink()
    assert refused(root).startswith(f"no picture of {root} is left to test on: every class has a single")


def test_a_class_on_one_side_of_train_and_test_is_one_line_naming_it(tmp_path):
    root = tmp_path / "pics"
    grey_folder(root / "train", {"cat": 2, "dog": 2, "emu": 2})
    grey_folder(root / "test", {"cat": 1})
    message = refused(root)
    assert message.startswith(f"2 class(es) without pictures in {root / 'test'}: dog, emu: ")
    grey_folder(root / "test", {"cat": 1, "dog": 1, "emu": 1, "fox": 1})
    assert refused(root).startswith(f"1 class(es) without pictures in {root / 'train'}: fox")
    (root / "test" / "fox" / "00.png").unlink()
    assert "test/fox" in refused(root)  # an empty class folder
    (root / "test" / "fox").rmdir()
    (root / "val").mkdir()
    assert "holds train/ and test/ and also val" in refused(root)
    (root / "val").rmdir()
    (root / "test").rename(tmp_path / "gone")
    assert f"{root} holds train/ alone" in refused(root)


def test_skip_bad_leaves_unreadable_pictures_out_and_counts_them(tmp_path, capsys):
    root = grey_folder(tmp_path / "pics", {"cat": 3, "dog": 3})
    (root / "cat" / "bad.png").write_text("not a picture")
    (root / "dog" / "bad.jpg").write_bytes(b"")
    data, summary = read(root, skip_bad=True)
    assert summary["skipped"] == 2 and summary["train"] + summary["test"] == 6
    assert levels(np.concatenate([data.x_train, data.x_test])) == [0, 1, 10, 11, 20, 21]
    err = capsys.readouterr().err
    assert err.startswith(f"warning: skipped 2 unreadable picture(s) in {root}: cat/bad.png")
    assert err.count("\n") == 1


def test_skip_bad_still_holds_out_a_readable_picture_per_class(tmp_path):
    root = grey_folder(tmp_path / "pics", {"cat": 4, "dog": 2})
    data, _ = read(root)
    held = levels(data.x_test)  # one of each class; make those two files unreadable
    assert len(held) == 2
    for level in held:
        (root / ["cat", "dog"][level % 10] / f"{level // 10:02d}.png").write_text("broken")
    data, summary = read(root, skip_bad=True)
    assert summary["per_class"] == {"cat": {"train": 2, "test": 1}, "dog": {"train": 1, "test": 0}}
    assert summary["skipped"] == 2 and len(data.x_test) == 1
    for name in ("cat", "dog"):
        for f in (root / name).iterdir():
            f.write_text("broken")
    assert refused(root, skip_bad=True).startswith(f"2 class folder(s) in {root} with no readable picture left")


def test_skip_bad_in_a_train_test_split_needs_a_test_picture_left(tmp_path):
    root = tmp_path / "pics"
    grey_folder(root / "train", {"cat": 2, "dog": 2})
    grey_folder(root / "test", {"cat": 1, "dog": 1})
    (root / "test" / "dog" / "00.png").write_text("broken")
    assert "no readable picture left: test/dog" in refused(root, skip_bad=True)


def test_identical_files_in_train_and_test_are_counted_and_warned_of(tmp_path, capsys):
    root = tmp_path / "pics"
    grey_folder(root / "train", {"cat": 3, "dog": 3})
    for level, name in enumerate(("cat", "dog")):
        solid(root / "test" / name / "own.png", 200 + level, mode="L")
        (root / "test" / name / "copy.png").write_bytes((root / "train" / name / "02.png").read_bytes())
    data, summary = read(root, progress=True)
    assert summary["duplicates"] == 2
    err = capsys.readouterr().err
    assert "img/s" in err or "img]" in err  # the progress bar
    warning = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("warning")]
    assert warning == [f"warning: 2 test picture(s) in {root} are byte-identical to training pictures: "
                       "test/cat/copy.png = train/cat/02.png, test/dog/copy.png = train/dog/02.png: "
                       "the test accuracy overstates the model on new pictures"]
    # the same pixels in other bytes (another format) are not the same file
    for name in ("cat", "dog"):
        (root / "test" / name / "copy.png").unlink()
        Image.open(root / "train" / name / "02.png").save(root / "test" / name / "copy.bmp")
    assert read(root)[1]["duplicates"] == 0


@pytest.mark.parametrize("start", ["fork", "spawn"])  # workers write into shared memory; or send pixels
def test_the_parallel_decode_is_load_image_one_by_one(tmp_path, monkeypatch, start):
    rng = np.random.default_rng(0)
    root = tmp_path / "pics"
    for split, n in (("train", 24), ("test", 9)):
        for name in ("a", "b", "c"):
            for i in range(n // 3):
                w, h = rng.integers(5, 40, 2)
                pixels = rng.integers(0, 256, (h, w, 3), np.uint8)
                fmt = ["png", "jpg", "bmp", "gif", "webp", "tif"][i % 6]
                (root / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / split / name / f"{i:02d}.{fmt}")
    broken = root / "train" / "b" / "00.png"
    broken.write_text("broken")  # its row: zero, then left out
    pools = []
    real = multiprocessing.context.BaseContext.Pool
    monkeypatch.setattr(multiprocessing.context.BaseContext, "Pool",
                        lambda ctx, *a, **kw: pools.append(ctx.get_start_method()) or real(ctx, *a, **kw))
    monkeypatch.setattr(decode, "START", start)
    parallel, _ = read(root, workers=2, image_size=12, skip_bad=True)
    assert pools == [start]  # a pool of workers decoded it
    serial, _ = read(root, workers=1, image_size=12, skip_bad=True)
    assert pools == [start]
    for split in ("train", "test"):
        files = [f for f in sorted((root / split).rglob("*.*")) if f != broken]
        one_by_one = np.stack([load_image(f, 12)[0].transpose(2, 0, 1) for f in files])
        assert np.array_equal(getattr(parallel, f"x_{split}"), one_by_one)
        assert np.array_equal(getattr(serial, f"x_{split}"), one_by_one)
        assert getattr(parallel, f"y_{split}").tolist() == ["abc".index(f.parent.name) for f in files]


def test_decode_all_marks_failures_and_zeroes_their_rows(tmp_path):
    paths = []
    for i in range(10):
        paths.append(str(solid(tmp_path / f"{i}.png", i + 1, mode="L")))
    (tmp_path / "3.png").write_text("broken")
    (tmp_path / "9.png").unlink()
    (x0, found0), (x1, found1) = decode_all([paths[:7], paths[7:]], 4, workers=2, progress=False)
    assert x0.shape == (7, 3, 4, 4) and x1.shape == (3, 3, 4, 4) and x0.dtype == np.uint8
    assert found0.ok.tolist() == [True, True, True, False, True, True, True]
    assert found0.reasons == {3: "not an image (PNG, JPEG, BMP, GIF, WebP or TIFF expected)"}
    assert [int(v) for v in x0[:, 0, 0, 0]] == [1, 2, 3, 0, 5, 6, 7]
    assert [int(v) for v in x1[:, 1, 3, 3]] == [8, 9, 0] and found1.ok.tolist() == [True, True, False]
    assert found1.reasons[2].startswith("cannot read: [Errno 2] No such file or directory")
    assert len(set(found0.digests[found0.ok].tolist())) == 6 and found1.digests[2] == b""
    assert not decode._out  # the shared arrays are the caller's alone


def test_compact_keeps_rows_in_place_in_order():
    rng = np.random.default_rng(0)
    for n in (1, 5, 17):
        x = np.arange(n * 6, dtype=np.uint8).reshape(n, 2, 3)
        keep = rng.random(n) < 0.6
        want = x[keep].copy()
        got = compact(x, keep, block=2)
        assert np.array_equal(got, want) and (not len(got) or np.shares_memory(got, x))
    assert decode.chunk_size(60_000, 2) == decode.CHUNK and decode.chunk_size(10, 2) == 1


def test_load_image_names_every_format_it_takes(tmp_path):
    solid(tmp_path / "a.ico", 0, format="ICO")
    with pytest.raises(BadImage, match=f"a ICO image, not {KINDS}"):
        load_image(tmp_path / "a.ico", 8)
    assert KINDS == "PNG, JPEG, BMP, GIF, WebP or TIFF"
