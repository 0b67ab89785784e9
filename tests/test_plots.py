"""Figures: each builds from small synthetic arrays and saves as a whole, plausible PNG."""
from __future__ import annotations

import struct
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vitlens.plots import confusion
from vitlens.plots import figures as plots
from vitlens.plots.common import save_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a valid PNG has right after the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def saved(fig: Figure, tmp_path: Path, name: str = "fig.png") -> tuple[int, int]:
    """Save `fig`, check the file is a whole PNG of a sane size, return its pixel size."""
    open_before = plt.get_fignums()
    path = tmp_path / name
    save_figure(fig, path)
    assert 5_000 < path.stat().st_size < 2_000_000
    assert list(tmp_path.iterdir()) == [path]  # no temporary left beside it
    assert plt.get_fignums() == open_before
    assert fig.axes == []  # freed
    width, height = png_size(path)
    assert width >= 300 and height >= 200
    return width, height


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def images(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)


def maps_like(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Patch maps on an 8x8 grid summing to 1, blown up to 32x32 as the pipeline does."""
    m = rng.random((*shape, 8, 8))
    m /= m.sum(axis=(-2, -1), keepdims=True)
    return m.repeat(4, axis=-2).repeat(4, axis=-1)


def history(epochs: int) -> list[dict[str, float]]:
    return [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.1 / e, "train_acc": 0.3 + 0.1 * e,
             "val_acc": 0.25 + 0.1 * e, "lr": 1e-3} for e in range(1, epochs + 1)]


@pytest.mark.parametrize("epochs", [1, 3])
def test_training_curves(tmp_path, epochs):
    fig = plots.training_curves(history(epochs))
    assert fig.get_suptitle()
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_xlabel() == acc_ax.get_xlabel() == "epoch"
    assert "loss" in loss_ax.get_ylabel() and "accuracy" in acc_ax.get_ylabel()
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == ["train", "validation"]
    assert list(acc_ax.lines[1].get_ydata()) == pytest.approx(
        [100 * r["val_acc"] for r in history(epochs)])
    assert all(line.get_marker() == "o" for line in loss_ax.lines)  # one epoch stays visible
    saved(fig, tmp_path)


def test_training_curves_rejects_empty_history():
    with pytest.raises(ValueError, match="at least one epoch"):
        plots.training_curves([])


@pytest.mark.parametrize("n, rows, cols", [(3, 1, 3), (10, 2, 8)])
def test_image_grid(tmp_path, rng, n, rows, cols):
    imgs = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = [CLASSES[i % 10] for i in range(n)]
    fig = plots.image_grid(imgs, labels)
    assert fig.get_suptitle()
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == labels
    assert len(fig.axes) == rows * cols
    # Drawn channels last and unchanged: the raw pixels, not a normalised copy.
    np.testing.assert_array_equal(shown[0].images[0].get_array(), imgs[0].transpose(1, 2, 0))
    saved(fig, tmp_path)


def test_attention_overlays(tmp_path, rng, images):
    truth, pred = ["cat", "dog", "ship"], ["cat", "cat", "ship"]
    maps = maps_like(rng, 3)
    fig = plots.attention_overlays(images, truth, pred, [0.9, 0.55, 0.123], maps)
    assert fig.get_suptitle()
    grid = np.array([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]).reshape(3, 3)
    assert grid[0, 0].get_title() == "ground truth: cat"
    assert grid[0, 1].get_title() == "prediction: cat (90.0%)"
    assert grid[2, 1].get_title() == "prediction: ship (12.3%)"
    colours = [ax.title.get_color() for ax in grid[:, 1]]
    assert colours[0] == colours[2] != colours[1]  # right, wrong, right
    saved(fig, tmp_path)


def test_attention_overlays_map_aligns_with_image(images, rng):
    fig = plots.attention_overlays(images, ["cat"] * 3, ["cat"] * 3, [0.5] * 3,
                                   maps_like(rng, 3))
    ax = fig.axes[2]
    image, overlay = ax.images
    assert image.get_extent() == overlay.get_extent() == [0, 32, 32, 0]
    assert overlay.get_interpolation() == image.get_interpolation() == "nearest"
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(bars) == 3
    assert "attention" in bars[0].get_ylabel()


def test_attention_overlays_rejects_percent_confidence(images, rng):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plots.attention_overlays(images, ["cat"] * 3, ["cat"] * 3, [90.0, 50.0, 12.0],
                                 maps_like(rng, 3))


def test_attention_overlays_rejects_maps_not_at_image_size(images, rng):
    with pytest.raises(ValueError, match="upsampled"):
        plots.attention_overlays(images, ["cat"] * 3, ["cat"] * 3, [0.5] * 3,
                                 rng.random((3, 8, 8)))


def test_rollout_vs_heads(tmp_path, rng, images):
    titles = ["cat (pred cat)", "dog (pred cat)", "ship (pred ship)"]
    fig = plots.rollout_vs_heads(images, maps_like(rng, 3), maps_like(rng, 3, 3), titles)
    assert fig.get_suptitle() == "Attention rollout vs last-layer CLS attention per head"
    bars = [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert bars[:2] == ["rollout (share of CLS attention)", "CLS attention (share)"]
    mean = plots.rollout_vs_heads(images, maps_like(rng, 3), maps_like(rng, 3, 3), titles,
                                  readout="patch-mean")
    assert "last-layer patch-mean attention" in mean.get_suptitle()
    assert [ax.get_ylabel() for ax in mean.axes if ax.get_label() == "<colorbar>"][1] == \
        "patch-mean attention (share)"
    saved(mean, tmp_path)
    grid = np.array([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]).reshape(3, 5)
    assert [ax.get_title() for ax in grid[0]] == [titles[0], "rollout", "head 1", "head 2",
                                                  "head 3"]
    assert [ax.get_title() for ax in grid[1:, 0]] == titles[1:]
    # Heads of a row share one colour scale, so their strengths compare directly.
    for row in grid:
        norms = {(ax.images[1].norm.vmin, ax.images[1].norm.vmax) for ax in row[2:]}
        assert len(norms) == 1
    saved(fig, tmp_path)


def test_rollout_vs_heads_rejects_heads_without_head_axis(images, rng):
    with pytest.raises(ValueError, match="heads must be"):
        plots.rollout_vs_heads(images, maps_like(rng, 3), maps_like(rng, 3), ["a", "b", "c"])


@pytest.mark.parametrize("patch_size", [None, 4])
def test_attention_distance_plot(tmp_path, rng, patch_size):
    dist = rng.uniform(4, 20, (6, 3))
    fig = plots.attention_distance_plot(dist, patch_size)
    assert fig.get_suptitle()
    (ax,) = fig.axes
    assert ax.get_xlabel() == "network depth (layer)"
    assert ax.get_ylabel() == "mean attention distance (pixels)"
    assert len(ax.collections) == 3  # one scatter per head
    xs = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections])
    ys = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    assert sorted(set(xs)) == list(range(1, 7))
    np.testing.assert_allclose(np.sort(ys), np.sort(dist.ravel()))
    assert len(ax.lines) == (patch_size is not None)
    saved(fig, tmp_path)


def test_confusion_figure(tmp_path, rng):
    cm = rng.integers(0, 20, (10, 10))
    cm[np.diag_indices(10)] += 80
    fig = confusion.confusion_figure(cm, CLASSES)
    accuracy = np.trace(cm) / cm.sum()
    assert f"{accuracy:.1%}" in fig.get_suptitle()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == CLASSES
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert [t.get_text() for t in ax.texts] == [str(c) for c in cm.ravel()]
    np.testing.assert_allclose(ax.images[0].get_array().sum(axis=1), 1.0)  # row-normalised
    saved(fig, tmp_path)


def test_confusion_figure_survives_a_class_without_samples(tmp_path):
    cm = np.eye(10, dtype=int) * 5
    cm[3] = 0
    fig = confusion.confusion_figure(cm, CLASSES)
    share = fig.axes[0].images[0].get_array()
    assert not np.ma.is_masked(share)  # imshow masks NaN, which would hide a 0/0
    np.testing.assert_array_equal(share[3], 0.0)
    assert "100.0%" in fig.get_suptitle()


def test_confusion_figure_rejects_wrong_shape():
    with pytest.raises(ValueError, match="10 classes"):
        confusion.confusion_figure(np.zeros((9, 9)), CLASSES)


def confused(k: int, rng: np.random.Generator, per_class: int = 50) -> np.ndarray:
    """A plausible (k, k) confusion matrix: about half right, mistakes on a few classes."""
    p = rng.dirichlet(np.full(k, 0.05), size=k) * 0.5 + np.eye(k) * 0.5
    return np.stack([rng.multinomial(per_class, row) for row in p])


def label_boxes(fig: Figure, labels) -> list:
    FigureCanvasAgg(fig).draw()  # laid out as saved: the labels' extents in pixels
    return [t.get_window_extent() for t in labels if t.get_text()]


def assert_apart(boxes, axis: str) -> None:
    """Consecutive tick labels do not overlap along `axis` ("x" or "y")."""
    lo, hi = ("x0", "x1") if axis == "x" else ("y0", "y1")
    spans = sorted((getattr(b, lo), getattr(b, hi)) for b in boxes)
    overlaps = [(a, b) for a, b in zip(spans, spans[1:]) if b[0] < a[1] - 0.5]
    assert not overlaps, f"{len(overlaps)} overlapping {axis} tick labels"


@pytest.mark.parametrize("k", [100, 200])
def test_a_confusion_figure_of_many_classes_stays_readable(tmp_path, rng, k):
    """Past 20 classes: no counts in the cells, labels that do not overlap (every class at 100,
    every other at 200, as large as that allows), a square-root colour scale that shows a few
    per cent, a table of the top confusions beside it, and a figure of bounded size."""
    classes = [f"class_{i:03d}" for i in range(k)]
    cm = confused(k, rng)
    fig = confusion.confusion_figure(cm, classes)
    ax, table_ax = fig.axes[0], fig.axes[1]
    assert len(ax.texts) == 0
    step = 1 if k == 100 else 2
    assert [t.get_text() for t in ax.get_yticklabels()] == classes[::step]
    assert [t.get_text() for t in ax.get_xticklabels()] == classes[::step]
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 5
    assert_apart(label_boxes(fig, ax.get_yticklabels()), "y")
    assert_apart(label_boxes(fig, ax.get_xticklabels()), "x")
    share = ax.images[0].get_array()
    np.testing.assert_allclose(share.sum(axis=1), 1.0)  # row-normalised
    assert ax.images[0].norm(0.04) >= 0.2  # a 4% confusion is a visible tint
    [table] = table_ax.tables
    cells = table.get_celld()
    top = confusion.top_confusions(cm, classes)
    assert len(top) == 20
    assert [cells[i + 1, 0].get_text().get_text() for i in range(20)] == [r["true"] for r in top]
    assert [cells[i + 1, 1].get_text().get_text() for i in range(20)] == [r["predicted"] for r in top]
    assert f"{k} classes" in fig.get_suptitle()
    width, height = saved(fig, tmp_path)
    assert width <= 2500 and height <= 1900


def test_the_confusion_figure_grows_with_the_class_count_within_limits():
    sizes = [tuple(confusion.confusion_figure(np.eye(k), [str(i) for i in range(k)]).get_size_inches())
             for k in (3, 10, 20, 50, 100, 400)]
    heights = [h for _, h in sizes]
    assert heights == sorted(heights) and heights[1] < heights[2] < heights[-1] <= 16
    assert all(w <= 21 for w, _ in sizes)


def test_top_confusions_are_the_most_frequent_mistakes_first():
    names = ["a", "b", "c", "d"]
    cm = np.array([[9, 3, 0, 0],   # a -> b: 3 of 12
                   [1, 5, 0, 3],   # b -> d: 3 of 9, a larger share: before a -> b
                   [0, 0, 0, 0],   # no images of c
                   [0, 1, 2, 7]])  # d -> c: 2, d -> b and b -> a: 1 each, then in class order
    assert confusion.top_confusions(cm, names) == [
        {"true": "b", "predicted": "d", "count": 3, "share": 0.3333},
        {"true": "a", "predicted": "b", "count": 3, "share": 0.25},
        {"true": "d", "predicted": "c", "count": 2, "share": 0.2},
        {"true": "b", "predicted": "a", "count": 1, "share": 0.1111},
        {"true": "d", "predicted": "b", "count": 1, "share": 0.1}]
    assert len(confusion.top_confusions(cm, names, 2)) == 2
    assert confusion.top_confusions(np.eye(4, dtype=int) * 3, names) == []
    with pytest.raises(ValueError, match="4 classes"):
        confusion.top_confusions(np.zeros((3, 3)), names)


class _Broken(Exception):
    pass


def _failing_figure(monkeypatch: pytest.MonkeyPatch) -> Figure:
    """A real figure whose savefig writes half a PNG and then fails."""
    fig = plots.training_curves(history(2))

    def savefig(fname, **kwargs):
        Path(fname).write_bytes(PNG_SIGNATURE + b"half")
        raise _Broken("disk on fire")

    monkeypatch.setattr(fig, "savefig", savefig)
    return fig


def test_save_figure_leaves_no_file_when_drawing_fails(tmp_path, monkeypatch):
    fig = _failing_figure(monkeypatch)
    with pytest.raises(_Broken):
        save_figure(fig, tmp_path / "out" / "fig.png")
    assert list((tmp_path / "out").iterdir()) == []
    assert fig.axes == []  # freed even so


def test_save_figure_keeps_the_old_file_when_drawing_fails(tmp_path, monkeypatch):
    path = tmp_path / "fig.png"
    path.write_bytes(b"previous figure")
    with pytest.raises(_Broken):
        save_figure(_failing_figure(monkeypatch), path)
    assert list(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == b"previous figure"


def test_save_figure_closes_pyplot_figures(tmp_path):
    before = plt.get_fignums()
    fig = plt.figure()
    fig.add_subplot().plot([1, 2, 3])
    fig.suptitle("made with pyplot")
    save_figure(fig, tmp_path / "fig.png")
    assert plt.get_fignums() == before
    assert png_size(tmp_path / "fig.png")[0] >= 300


def test_figures_do_not_register_with_pyplot(rng, images):
    before = plt.get_fignums()
    plots.image_grid(images, ["a", "b", "c"])
    confusion.confusion_figure(np.eye(10), CLASSES)
    assert plt.get_fignums() == before
