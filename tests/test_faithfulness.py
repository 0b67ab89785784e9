"""Faithfulness: the metric tells a map on a model's evidence from a map away from it; AUC,
bootstrap, gradient rollout, the random baseline and the stage end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from mlflow.tracking import MlflowClient

from conftest import write_params
from vitlens.config import ConfigError, parse_params
from vitlens.errors import VitlensError
from vitlens.explain.attention import (
    gradient_rollout,
    gradient_rollout_map,
    rollout_map,
    upsample_map,
)
from vitlens.explain.faithfulness import (
    auc,
    bootstrap_interval,
    faithfulness_curves,
    gaussian_blur,
    patch_ranks,
    path_variants,
    step_counts,
    summarize_curves,
)
from vitlens.explain.maps import compute_maps, explanation_maps, random_maps
from vitlens.model.vit import ViT
from vitlens.pipeline.faithfulness import run_faithfulness
from vitlens.plots import faithfulness as faithfulness_plots
from vitlens.plots import figures as plots

SIZE, PATCH, CLASSES = 16, 4, 4
GRID = SIZE // PATCH
EVIDENCE = torch.tensor([0, 3, 12, 15])  # the evidence patch of each class: the four corners


def evidence_images(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images whose class is told by one thing only: a +-3 checkerboard patch at the
    class's corner. A checkerboard, not a bright square, so blurring erases it too."""
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randn(n, 3, SIZE, SIZE, generator=g)
    at = upsample_map(F.one_hot(EVIDENCE[y], GRID * GRID).bool().view(n, GRID, GRID), SIZE)
    i = torch.arange(SIZE)
    checker = ((i[:, None] + i) % 2 * 6 - 3).float()  # (S, S)
    return torch.where(at[:, None], checker, x), y


def partly_removed(x: torch.Tensor, y: torch.Tensor, g: torch.Generator):
    """Half the images with a random share of patches zeroed or blurred, as the metric does;
    an image that lost its evidence patch gets a uniform target. The model then meets the
    metric's images in training and says "no idea" exactly when the evidence is gone."""
    n = len(x)
    share = torch.rand(n, 1, generator=g) * (torch.rand(n, 1, generator=g) < 0.5)
    drop = torch.rand(n, GRID * GRID, generator=g) < share  # (n, patches)
    mask = upsample_map(drop.view(n, GRID, GRID), SIZE)[:, None]
    base = torch.where(torch.rand(n, 1, 1, 1, generator=g) < 0.5, gaussian_blur(x, 11, 5.0), 0.0)
    lost = drop.gather(1, EVIDENCE[y][:, None])  # (n, 1)
    target = torch.where(lost, 1 / CLASSES, F.one_hot(y, CLASSES).float())
    return torch.where(mask, base, x), target


@pytest.fixture(scope="module")
def evidence_model() -> ViT:
    """A tiny ViT trained (about 2 s) on evidence_images, the lr decaying linearly to zero so
    that the last steps settle; all but a few in a thousand right (the exact few vary with
    the CPU's kernels)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small: a second thread only adds overhead
    try:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        model = ViT(image_size=SIZE, patch_size=PATCH, num_classes=CLASSES, dim=32, depth=1,
                    heads=2, mlp_ratio=2.0)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / 400)
        for _ in range(400):
            x, target = partly_removed(*evidence_images(64, g), g)
            loss = F.cross_entropy(model(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_metric_scores_the_evidence_far_above_random_and_away_from_it_below(evidence_model):
    x, y = evidence_images(96, torch.Generator().manual_seed(1))
    with torch.no_grad():
        right = evidence_model(x).argmax(1) == y
    assert right.float().mean() > 0.95, f"the evidence model is right on {right.float().mean():.0%}"
    x, y = x[right][:64], y[right][:64]  # a map is scored on the model's evidence: images it gets right
    evidence = F.one_hot(EVIDENCE[y], GRID * GRID).float().view(-1, GRID, GRID)
    maps = {"evidence": evidence, "away": 1 - evidence, "random": random_maps(64, GRID, 0)}
    pred, curves = faithfulness_curves(evidence_model, x, maps, steps=16, blur_kernel=11,
                                       blur_sigma=5.0, batch_size=32, bf16=False)
    assert (pred == y).all()
    s = summarize_curves(curves, samples=500, confidence=0.95, seed=0)
    on, off, rnd = s["evidence"], s["away"], s["random"]
    # Deletion (lower is better): far below random, and no overlap of the intervals.
    assert on["deletion_auc"] < rnd["deletion_auc"] - 0.2 and on["deletion_high"] < rnd["deletion_low"]
    assert off["deletion_auc"] > rnd["deletion_auc"] + 0.15 and off["deletion_low"] > rnd["deletion_high"]
    # Insertion (higher is better): the mirror image.
    assert on["insertion_auc"] > rnd["insertion_auc"] + 0.2 and on["insertion_low"] > rnd["insertion_high"]
    assert off["insertion_auc"] < rnd["insertion_auc"] - 0.15 and off["insertion_high"] < rnd["insertion_low"]
    # Removing the one evidence patch (step 1 of 16) drops the class to about chance.
    assert curves["evidence"].deletion[:, 0].mean() > 0.8 > 0.4 > curves["evidence"].deletion[:, 1].mean()


@pytest.mark.parametrize("curve,want", [
    ([1.0] * 17, 1.0), ([0.0] * 5, 0.0), (torch.linspace(0, 1, 17).tolist(), 0.5),
    ([1.0, 0.0, 0.0], 0.25), ([0.0, 1.0], 0.5), ([0.2, 0.6, 1.0, 0.6], 2 / 3),
])
def test_auc_is_the_trapezoid_normalised_to_the_unit_interval(curve, want):
    assert auc(torch.tensor(curve)).item() == pytest.approx(want)


def test_auc_keeps_leading_dims():
    curves = torch.rand(2, 3, 9)
    got = auc(curves)
    assert got.shape == (2, 3)
    assert got[1, 2].item() == pytest.approx(auc(curves[1, 2]).item())


def test_bootstrap_interval_covers_the_mean_with_the_width_theory_gives():
    values = np.random.default_rng(0).normal(0.5, 0.1, 400)
    lo, hi = bootstrap_interval(values, samples=2000, confidence=0.95, seed=0)
    assert lo < values.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * values.std() / 20, rel=0.1)  # 1.96 sigma / sqrt(n)
    assert bootstrap_interval(values, samples=2000, confidence=0.95, seed=0) == (lo, hi)
    assert bootstrap_interval(values, samples=2000, confidence=0.95, seed=1) != (lo, hi)
    lo50, hi50 = bootstrap_interval(values, samples=2000, confidence=0.5, seed=0)
    assert lo < lo50 < hi50 < hi
    assert bootstrap_interval(np.full(7, 0.3), samples=50, confidence=0.95, seed=0) == \
        pytest.approx((0.3, 0.3))


def _attention(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).softmax(dim=-1)


def test_gradient_rollout_composes_layers_first_to_last():
    a1, a2 = _attention(2, 3, 5, 5, seed=1), _attention(2, 3, 5, 5, seed=2)
    g1, g2 = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    eye = torch.eye(5)
    bar1, bar2 = ((g * a).clamp_min(0).mean(dim=1) for g, a in ((g1, a1), (g2, a2)))
    want = (eye + bar2) @ (eye + bar1)  # R = R + Abar @ R, first layer first
    torch.testing.assert_close(gradient_rollout([a1, a2], [g1, g2]), want)
    assert not torch.allclose(want, (eye + bar1) @ (eye + bar2))  # the order is tested


def test_gradient_rollout_map_counts_only_attention_that_raises_the_score():
    attns = [_attention(2, 3, 5, 5, seed=s) for s in (1, 2)]
    zeros = gradient_rollout_map(attns, [-a for a in attns], grid=2)
    assert zeros.shape == (2, 2, 2) and (zeros == 0).all()
    grad = torch.zeros(1, 1, 5, 5)
    grad[0, 0, 0, 1], grad[0, 0, 0, 2] = 1.0, -10.0  # CLS on patch 0 helps, on patch 1 hurts
    m = gradient_rollout_map([_attention(1, 1, 5, 5, seed=3)], [grad], grid=2)
    torch.testing.assert_close(m, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    m = gradient_rollout_map(attns, [torch.ones_like(a) for a in attns], grid=2)
    torch.testing.assert_close(m.sum(dim=(1, 2)), torch.ones(2))
    assert (m >= 0).all()


@pytest.fixture(scope="module")
def small_vit() -> ViT:
    torch.manual_seed(0)
    return ViT(image_size=SIZE, patch_size=PATCH, num_classes=CLASSES, dim=32, depth=2,
               heads=2, mlp_ratio=2.0).eval()


def test_gradient_rollout_is_per_image_and_per_class(small_vit):
    x = torch.randn(5, 3, SIZE, SIZE)
    m = compute_maps(small_vit, x)
    logits, maps, attns = m.logits, m.grad_rollout, m.attns
    assert logits.shape == (5, CLASSES) and maps.shape == (5, GRID, GRID) and len(attns) == 2
    torch.testing.assert_close(maps.sum(dim=(1, 2)), torch.ones(5))
    # The batch sums the images' logits: each image's map must still be its own.
    torch.testing.assert_close(compute_maps(small_vit, x[2:3]).grad_rollout, maps[2:3])
    torch.testing.assert_close(compute_maps(small_vit, x, target=logits.argmax(1)).grad_rollout, maps)
    other = (logits.argmax(1) + 1) % CLASSES
    assert not torch.allclose(compute_maps(small_vit, x, target=other).grad_rollout, maps)


def test_explanation_maps_batch_alike_and_match_the_attention_helpers(small_vit):
    x = torch.randn(5, 3, SIZE, SIZE)
    methods = ["rollout", "grad_rollout", "last_layer", "random"]
    maps = explanation_maps(small_vit, x, methods, seed=3, batch_size=2)
    assert list(maps) == methods and all(m.shape == (5, GRID, GRID) for m in maps.values())
    whole = explanation_maps(small_vit, x, methods, seed=3, batch_size=5)
    for m in methods:
        torch.testing.assert_close(maps[m], whole[m])
    with torch.no_grad():
        _, attns = small_vit(x, return_attn=True)
    torch.testing.assert_close(maps["rollout"], rollout_map(attns, GRID))
    torch.testing.assert_close(maps["last_layer"], attns[-1][:, :, 0, 1:].mean(1).view(5, GRID, GRID))
    with pytest.raises(ValueError, match="unknown methods"):
        explanation_maps(small_vit, x, ["saliency"], seed=0, batch_size=2)


def test_maps_of_a_mean_pool_model_read_the_patch_mean():
    """model.pool=mean: rollout and last_layer read the mean of the patch rows, and the
    gradient-weighted rollout explains the logit the head computes from that mean."""
    torch.manual_seed(0)
    model = ViT(image_size=SIZE, patch_size=PATCH, num_classes=CLASSES, dim=32, depth=2,
                heads=2, mlp_ratio=2.0, pool="mean").eval()
    x = torch.randn(4, 3, SIZE, SIZE)
    m = compute_maps(model, x)
    attns = m.attns
    torch.testing.assert_close(m.rollout, rollout_map(attns, GRID, pool="mean"))
    assert not torch.allclose(m.rollout, rollout_map(attns, GRID), atol=1e-4)
    torch.testing.assert_close(m.last_layer, attns[-1][:, :, 1:, 1:].mean((1, 2)).view(4, GRID, GRID))
    torch.testing.assert_close(m.grad_rollout.sum(dim=(1, 2)), torch.ones(4))
    torch.testing.assert_close(compute_maps(model, x[1:2]).grad_rollout, m.grad_rollout[1:2])
    other = (m.logits.argmax(1) + 1) % CLASSES
    assert not torch.allclose(compute_maps(model, x, target=other).grad_rollout, m.grad_rollout)


def test_random_maps_depend_on_the_seed_alone():
    first = random_maps(6, GRID, seed=0)
    torch.manual_seed(123)
    torch.rand(10)  # global random state moves; the maps must not
    torch.testing.assert_close(random_maps(6, GRID, seed=0), first)
    assert not torch.allclose(random_maps(6, GRID, seed=1), first)
    assert first.shape == (6, GRID, GRID)


def test_variants_change_the_top_ranked_patches_in_even_steps():
    counts = step_counts(16, 4)
    assert counts.tolist() == [0, 4, 8, 12, 16]
    maps = torch.rand(3, GRID, GRID)
    start, end = torch.zeros(3, 3, SIZE, SIZE), torch.ones(3, 3, SIZE, SIZE)
    v = path_variants(start, end, patch_ranks(maps), counts)  # (3, 5, 3, S, S)
    changed = v[:, :, 0].unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH).amax(dim=(-2, -1))
    for i in range(3):
        for t, k in enumerate(counts.tolist()):
            top = set(maps[i].flatten().argsort(descending=True)[:k].tolist())
            assert set(changed[i, t].flatten().nonzero()[:, 0].tolist()) == top
    with pytest.raises(ValueError, match="steps=17"):
        step_counts(16, 17)


def test_curves_are_the_probabilities_of_every_variant(small_vit):
    """The shared ends, scored once per image, sit where scoring each variant puts them."""
    x, maps = torch.randn(3, 3, SIZE, SIZE), {"a": torch.rand(3, GRID, GRID)}
    pred, curves = faithfulness_curves(small_vit, x, maps, steps=4, blur_kernel=5,
                                       blur_sigma=2.0, batch_size=2, bf16=False)
    counts, ranks = step_counts(GRID * GRID, 4), patch_ranks(maps["a"])
    paths = {"deletion": (x, torch.zeros_like(x)), "insertion": (gaussian_blur(x, 5, 2.0), x)}
    for kind, (start, end) in paths.items():
        v = path_variants(start, end, ranks, counts)  # (3, 5, C, S, S)
        with torch.no_grad():
            probs = small_vit(v.flatten(0, 1)).softmax(1).view(3, 5, -1)
        want = probs.gather(2, pred.view(3, 1, 1).expand(3, 5, 1))[..., 0]
        torch.testing.assert_close(getattr(curves["a"], kind), want)


def test_blur_keeps_flat_images_and_erases_a_checkerboard():
    flat = torch.full((1, 3, SIZE, SIZE), 0.7)
    torch.testing.assert_close(gaussian_blur(flat, 11, 5.0), flat)
    x, _ = evidence_images(4, torch.Generator().manual_seed(0))
    blurred = gaussian_blur(x, 11, 5.0)
    assert blurred.shape == x.shape and blurred.abs().max() < 0.5 * x.std()


@pytest.mark.parametrize("key,value,message", [
    ("methods", ["rollout", "saliency"], "entries must each be one of rollout, grad_rollout"),
    ("methods", "rollout", "must be a list of strings"),
    ("methods", [], "must name each method once, at least one"),
    ("methods", ["random", "random"], "must name each method once"),
    ("blur_kernel", 10, "faithfulness.blur_kernel=10 must be odd"),
    ("confidence", 95, "faithfulness.confidence=95 must be < 1"),
    ("position_top", -1, "faithfulness.position_top=-1 must be >= 0"),
    ("position_warn", 1.5, "faithfulness.position_warn=1.5 must be <= 1"),
])
def test_bad_faithfulness_params_name_the_key(params_dict, key, value, message):
    params_dict["faithfulness"][key] = value
    with pytest.raises(ConfigError, match=message):
        parse_params(params_dict)


def test_overlays_gain_the_gradient_weighted_column():
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    maps = np.random.default_rng(1).random((2, 32, 32))
    fig = plots.attention_overlays(images, ["cat", "dog"], ["cat", "cat"], [0.9, 0.4], maps,
                                   grad_maps=maps[::-1].copy())
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 8 and axes[3].get_title() == "gradient-weighted rollout"
    np.testing.assert_array_equal(axes[3].images[1].get_array(), maps[1])


def test_stage_writes_metrics_curves_figures_and_logs_to_the_run(project, cifar_npz, monkeypatch):
    out, metrics_path = project / "reports/faithfulness", project / "reports/faithfulness.json"
    drawn = []  # the methods figure's columns, in order
    real = faithfulness_plots.methods_figure
    monkeypatch.setattr(faithfulness_plots, "methods_figure",
                        lambda images, maps, *a, **kw: drawn.append(list(maps)) or real(images, maps, *a, **kw))
    metrics = run_faithfulness(str(project / "params.yaml"), project / "models/model.pt",
                               cifar_npz, out, metrics_path)
    assert json.loads(metrics_path.read_text()) == metrics
    methods = ["rollout", "grad_rollout", "last_layer", "random"]
    assert list(metrics) == ["images", *methods] and metrics["images"] == 12
    for m in methods:
        s = metrics[m]
        for kind in ("deletion", "insertion"):
            assert 0 <= s[f"{kind}_low"] <= s[f"{kind}_auc"] <= s[f"{kind}_high"] <= 1
        # Beside the AUCs, the position bias, its parts, where the top patches fall.
        for key in ("position_bias", "position_flip", "position_top", "position_blank", "top_concentration"):
            assert 0 <= s[key] <= 1, (m, key, s[key])
        assert s["position_bias"] == max(s["position_flip"], s["position_top"], s["position_blank"])
        assert np.array(s["top_patch_share"]).shape == (8, 8)  # 32 px in 4 px patches
        assert sum(map(sum, s["top_patch_share"])) == pytest.approx(1.0)
        assert len(s["excess_positions"]) <= 3
        for e in s["excess_positions"]:
            assert s["top_patch_share"][e["row"]][e["col"]] == e["share"] > 1 / 64
    assert metrics["random"]["position_bias"] < 0.2  # 12 images of noise
    rows = (out / "curves.csv").read_text().splitlines()
    assert rows[0].split(",") == ["fraction", *(f"{k}_{m}" for k in ("deletion", "insertion")
                                               for m in methods)]
    assert len(rows) == 1 + 8 + 1 and rows[-1].startswith("1.0,")
    for name in ("curves.png", "methods.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    # The figure leads with the map this run's deletion AUC ranks best; random, the floor, last.
    scored = sorted(methods[:3], key=lambda m: metrics[m]["deletion_auc"])
    assert drawn == [scored + ["random"]]
    again = run_faithfulness(str(project / "params.yaml"), project / "models/model.pt",
                             cifar_npz, out, metrics_path)
    assert again == metrics  # same params, same numbers

    run_id = torch.load(project / "models/model.pt", weights_only=True)["mlflow_run_id"]
    client = MlflowClient()
    logged = client.get_run(run_id).data.metrics
    assert logged["faithfulness/rollout/deletion_auc"] == pytest.approx(metrics["rollout"]["deletion_auc"])
    assert "faithfulness/random/insertion_high" in logged and "faithfulness/seconds" in logged
    for m in methods:
        assert logged[f"faithfulness/{m}/position_bias"] == pytest.approx(metrics[m]["position_bias"])
    assert "faithfulness/position_seconds" in logged
    logged_files = {a.path for a in client.list_artifacts(run_id, "faithfulness")}
    assert {f"faithfulness/{n}" for n in ("curves.png", "methods.png", "curves.csv",
                                           "faithfulness.json")} <= logged_files


def test_stage_rejects_more_images_than_the_test_set(project, cifar_npz, tmp_path):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["faithfulness"]["images"] = 101
    write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(VitlensError, match="faithfulness.images=101 must be <= the 100 test images"):
        run_faithfulness(str(tmp_path / "params.yaml"), project / "models/model.pt", cifar_npz,
                         tmp_path / "out", tmp_path / "f.json")
    assert not (tmp_path / "out").exists()
