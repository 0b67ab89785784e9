"""`vitlens compare A B`: the agreement of two models' maps, and the compare page in real
headless Chromium, network blocked: what it shows after real clicks must equal what Python
computed (the agreement of image k, the difference map, the linked views of both models)."""
import numpy as np
import pytest
import torch

from conftest import open_page
from vitlens.data.normalize import Normalizer
from vitlens.explain.agreement import agreement, common_grid, ranks, top_k
from vitlens.explain.maps import compute_maps
from vitlens.model.trained import Trained
from vitlens.model.vit import ViT
from vitlens.report import compare
from vitlens.report.page import write_explorer

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
N_IMAGES = 12


def tiny(seed: int, depth: int, heads: int, patch: int = 8) -> Trained:
    torch.manual_seed(seed)
    vit = ViT(image_size=32, patch_size=patch, num_classes=10, dim=32, depth=depth, heads=heads,
              mlp_ratio=2.0).eval()
    with torch.no_grad():  # sharper attention than at init, so the maps differ visibly
        for block in vit.blocks:
            block.attn.qkv.weight[:64] *= 3
    params = {"model": {"image_size": 32, "patch_size": patch, "depth": depth, "heads": heads, "dim": 32},
              "train": {"lr": 0.002, "epochs": 3 + seed}}
    history = [{"epoch": e, "train_loss": 2 - e / 3, "val_loss": 2.1 - e / (3 + seed), "train_acc": e / 4,
                "val_acc": e / (5 + seed)} for e in (1, 2, 3)]
    return Trained(vit=vit, norm=Normalizer([0.5] * 3, [0.25] * 3), classes=CLASSES, run_id="",
                   params=params, record={"history": history}, device=torch.device("cpu"), bf16=False)


@pytest.fixture(scope="module")
def models():
    return tiny(0, depth=2, heads=4), tiny(2, depth=3, heads=2)  # seeds whose predictions sometimes agree


def maps_of(t: Trained, images: np.ndarray):
    return compute_maps(t.vit, t.norm(torch.from_numpy(images)))


@pytest.fixture(scope="module")
def inputs(models):
    """Random images, and labels that make every outcome happen: both right, A right only, B
    right only, both wrong (untrained models are right only by the labels' choice)."""
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (200, 3, 32, 32), dtype=np.uint8)
    pa, pb = (maps_of(t, pool).logits.argmax(1).numpy() for t in models)
    same, other = np.flatnonzero(pa == pb), np.flatnonzero(pa != pb)
    keep = np.concatenate([same[:4], other[:N_IMAGES - 4]])  # 4 where the two models agree
    images, pa, pb = pool[keep], pa[keep], pb[keep]
    differ = np.flatnonzero(pa != pb)
    truth = [int(c) for c in pa]  # where they agree: both right
    truth[differ[0]] = int(pb[differ[0]])  # B right only; A right only where they differ otherwise
    truth[differ[1]] = next(c for c in range(10) if c not in (pa[differ[1]], pb[differ[1]]))  # both wrong
    return images, truth


@pytest.fixture(scope="module")
def doc(models, inputs):
    images, truth = inputs
    a, b = models
    metrics = {"accuracy": 0.5, "per_class_accuracy": {c: i / 10 for i, c in enumerate(CLASSES)}}
    ra, rb = (maps_of(t, images).rollout.numpy() for t in models)
    return compare.document(
        compare.Side("runA", a, {"metrics": metrics}), compare.Side("runB", b, {}), images,
        [f"test #{i}" for i in range(N_IMAGES)], truth, rollouts=(ra, rb), means_images=images,
        means_labels=truth, means_rollouts=(ra, rb),
        layers=([0, 1], [0, 1, 2]), heads=([0, 1, 2, 3], [0, 1]), batch_size=5, position_warn=0.5)


@pytest.fixture(scope="module")
def page(browser, doc, tmp_path_factory):
    path = tmp_path_factory.mktemp("compare") / "index.html"
    write_explorer(path, doc)
    pg = open_page(browser, path)
    pg.path = path
    yield pg
    pg.context.close()


def shown(pg, what):
    return pg.evaluate(f"window.vitlens.shown.{what}")


def select_image(pg, k: int) -> None:
    pg.locator(f'[data-testid="thumb"][data-index="{k}"]').click()


# -- the agreement, in Python -------------------------------------------------------------

def test_agreement_is_the_rank_correlation_and_the_top_k_overlap():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a, b = rng.random((5, 4, 4)), rng.random((5, 4, 4))
    b[0] = a[0] * 3  # the same order at another scale: full agreement
    b[1] = -a[1]
    ag = agreement(a, b)
    want = [scipy_stats.spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)]
    np.testing.assert_allclose(ag["spearman"], want, atol=1e-12)
    assert ag["spearman"][0] == pytest.approx(1) and ag["spearman"][1] == pytest.approx(-1)
    k = top_k(16)
    assert k == 2 and ag["overlap"][0] == 1 and ag["overlap"][1] == 0
    ties = np.array([[1.0, 3.0, 3.0, 2.0]])
    np.testing.assert_array_equal(ranks(ties), [[0, 2.5, 2.5, 1]])
    assert agreement(np.ones((1, 2, 2)), a[:1, :2, :2])["spearman"][0] == 0  # a flat map orders nothing


def test_maps_on_other_grids_compare_on_the_common_grid():
    a, b = np.arange(16.0).reshape(1, 4, 4), np.array([[[0.0, 1.0], [2.0, 3.0]]])
    ua, ub = common_grid(a, b)
    assert ua.shape == ub.shape == (1, 4, 4)
    np.testing.assert_array_equal(ub[0, :2, :2], 0) and np.testing.assert_array_equal(ub[0, 2:, 2:], 3)
    assert agreement(a, b)["spearman"][0] > 0.8


def test_the_images_are_chosen_from_where_either_model_fails():
    truth = np.array([0, 0, 1, 1, 2, 2])
    pa, pb = np.array([0, 0, 1, 0, 2, 1]), np.array([0, 1, 1, 1, 2, 1])
    assert compare.outcomes(pa, pb, truth).tolist() == ["both", "a", "both", "b", "both", "neither"]
    picked = compare.choose(pa, pb, truth, 4, None)
    assert sum(compare.outcomes(pa, pb, truth)[picked] != "both") == 2


# -- the page ------------------------------------------------------------------------------

def test_the_page_opens_fast_with_no_error_and_no_network(page, capsys):
    assert page.errors == [] and page.blocked == []
    assert page.requests == [page.path.as_uri()]
    ms = page.evaluate("window.vitlens.loadMs")
    with capsys.disabled():
        print(f"\ncompare page {page.path.stat().st_size / 1024:.0f} KiB, ready {ms:.0f} ms after navigation")
    assert ms < 2000


def test_the_agreement_of_image_k_is_pythons(page, models, inputs):
    images, _ = inputs
    a, b = models
    want = agreement(maps_of(a, images).rollout.numpy(), maps_of(b, images).rollout.numpy())
    for k in (0, 5, N_IMAGES - 1):
        select_image(page, k)
        got = shown(page, "agreement")
        assert got["k"] == k
        assert got["spearman"] == pytest.approx(want["spearman"][k], abs=1e-6)
        assert got["overlap"] == pytest.approx(want["overlap"][k], abs=1e-6)
        text = page.get_by_test_id("agreement").inner_text()
        assert f"rank correlation {want['spearman'][k]:.3f}" in text
        assert f"top-{top_k(16)} overlap {want['overlap'][k]:.3f}" in text


def test_the_gallery_is_least_alike_first_and_filters_by_outcome(page, models, inputs, doc):
    images, truth = inputs
    a, b = models
    rho = agreement(maps_of(a, images).rollout.numpy(), maps_of(b, images).rollout.numpy())["spearman"]
    page.select_option("#filter-correct", "all")
    order = np.argsort(np.round(rho, 6), kind="stable").tolist()
    assert shown(page, "a.gallery") == order
    pa = maps_of(a, images).logits.argmax(1).numpy()
    pb = maps_of(b, images).logits.argmax(1).numpy()
    kinds = compare.outcomes(pa, pb, np.array(truth))
    assert set(kinds) == {"both", "a", "b", "neither"}
    for kind in ("both", "a", "b", "neither"):
        page.select_option("#filter-correct", kind)
        assert shown(page, "a.gallery") == [k for k in order if kinds[k] == kind]
    page.select_option("#filter-correct", "all")


def test_the_difference_map_is_a_minus_b(page, models, inputs, doc):
    images, _ = inputs
    a, b = models
    ma, mb = maps_of(a, images), maps_of(b, images)
    for kind, va, vb in (("rollout", ma.rollout, mb.rollout), ("grad_rollout", ma.grad_rollout, mb.grad_rollout)):
        page.select_option("#a-map-kind", kind)
        select_image(page, 3)
        got = shown(page, "diff")
        assert got["k"] == 3 and got["kind"] == kind and got["grid"] == 4
        want = (va[3] - vb[3]).numpy().ravel()
        step = (va[3].max() + vb[3].max()).item() / 255  # one uint8 step of each packed map
        np.testing.assert_allclose(got["values"], want, atol=step)
    # B has no third head: no difference to draw, said so
    page.select_option("#a-map-kind", "head:3")
    assert shown(page, "diff")["values"] is None and "B has no head 3" in page.locator("#diff-info").inner_text()
    page.select_option("#a-map-kind", "rollout")


def test_picking_a_layer_head_and_patch_once_shows_it_in_both_models(page, models, inputs):
    images, _ = inputs
    a, b = models
    ma, mb = maps_of(a, images), maps_of(b, images)
    select_image(page, 2)
    page.locator('#a-model-grid [data-testid="model-cell"][data-layer="1"][data-head="1"]').click()
    assert (shown(page, "a.layer"), shown(page, "a.headIndex")) == (1, 1)
    assert (shown(page, "b.layer"), shown(page, "b.headIndex")) == (1, 1)
    tol = 0.02
    np.testing.assert_allclose(shown(page, "b.head"), mb.attns[1][2, 1, 0, 1:].numpy(), atol=tol)
    # A patch clicked in A's head view (row 2, column 3 of the 4x4 grid): B reads the same one.
    page.locator("#a-head-canvas").scroll_into_view_if_needed()
    box = page.locator("#a-head-canvas").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 3.5 / 4, box["y"] + box["height"] * 2.5 / 4)
    token = 1 + 2 * 4 + 3
    assert shown(page, "a.token") == shown(page, "b.token") == token
    np.testing.assert_allclose(shown(page, "a.head"), ma.attns[1][2, 1, token, 1:].numpy(), atol=tol)
    np.testing.assert_allclose(shown(page, "b.head"), mb.attns[1][2, 1, token, 1:].numpy(), atol=tol)
    # B's layer 3 is past A's two: A shows its last, B its third.
    page.select_option("#b-layer", "2")
    assert (shown(page, "a.layer"), shown(page, "b.layer")) == (1, 2)
    np.testing.assert_allclose(shown(page, "b.head"), mb.attns[2][2, 1, token, 1:].numpy(), atol=tol)
    # The map picked in B's image view is drawn in A's too.
    page.select_option("#b-map-kind", "last_layer")
    assert shown(page, "a.main")["kind"] == shown(page, "b.main")["kind"] == "last_layer"
    page.select_option("#b-map-kind", "rollout")


def test_per_class_differences_agreements_and_the_summary_are_pythons(page, models, inputs, doc):
    images, truth = inputs
    a, b = models
    ra, rb = maps_of(a, images).rollout.numpy(), maps_of(b, images).rollout.numpy()
    ag, y = agreement(ra, rb), np.array(truth)
    diffs, got = shown(page, "classDiff"), shown(page, "classAgreement")
    present = sorted(set(truth))
    for c in present:
        want = (ra[y == c].mean(0) - rb[y == c].mean(0)).ravel()
        step = (ra[y == c].mean(0).max() + rb[y == c].mean(0).max()) / 255
        np.testing.assert_allclose(diffs[c], want, atol=step)
        assert got[c]["spearman"] == pytest.approx(ag["spearman"][y == c].mean(), abs=1e-6)
        assert got[c]["overlap"] == pytest.approx(ag["overlap"][y == c].mean(), abs=1e-6)
    absent = next(c for c in range(10) if c not in present)
    assert got[absent]["spearman"] is None  # no image of that class
    text = page.get_by_test_id("summary").inner_text()
    means = [ag["spearman"][y == c].mean() if c in present else np.inf for c in range(10)]
    assert f"over {N_IMAGES} test images" in text.lower()
    assert f"averages {ag['spearman'].mean():.3f}" in text and f"{100 * ag['overlap'].mean():.1f}%" in text
    assert f"the class {CLASSES[int(np.argmin(means))]}" in text
    page.get_by_test_id("show-lowest").click()
    assert shown(page, "agreement")["k"] == int(np.argmin(ag["spearman"]))


def test_both_runs_facts_side_by_side(page):
    table = page.locator("#compare-facts").inner_text()
    assert "train.epochs" in table and "model.depth" in table and "model.heads" in table
    assert "50.0%" in table and "—" in table  # A's test accuracy; B has none
    assert page.locator('#compare-facts [data-testid="curve"]').count() == 2


def test_models_on_other_patch_grids_compare_on_the_common_grid(browser, models, inputs, tmp_path):
    """B in 16 px patches (2x2) against A's 8 px (4x4): the difference on A's grid, B's value
    repeated over the 4 cells each of its patches covers; a patch picked in A is the B patch
    at the same place."""
    images, truth = inputs
    a, b = models[0], tiny(2, depth=2, heads=2, patch=16)
    ma, mb = maps_of(a, images), maps_of(b, images)
    ra, rb = ma.rollout.numpy(), mb.rollout.numpy()
    doc = compare.document(
        compare.Side("A", a, {}), compare.Side("B", b, {}), images, [f"test #{i}" for i in range(N_IMAGES)],
        truth, rollouts=(ra, rb), means_images=images, means_labels=truth, means_rollouts=(ra, rb),
        layers=([0, 1], [0, 1]), heads=([0, 1, 2, 3], [0, 1]), batch_size=5, position_warn=0.5)
    path = tmp_path / "index.html"
    write_explorer(path, doc)
    pg = open_page(browser, path)
    try:
        assert pg.errors == []
        select_image(pg, 1)
        got = shown(pg, "diff")
        assert got["grid"] == 4
        want = (ra[1] - np.kron(rb[1], np.ones((2, 2)))).ravel()
        np.testing.assert_allclose(got["values"], want, atol=(ra[1].max() + rb[1].max()) / 255)
        assert shown(pg, "agreement")["spearman"] == pytest.approx(agreement(ra, rb)["spearman"][1], abs=1e-6)
        pg.locator("#a-head-canvas").scroll_into_view_if_needed()
        box = pg.locator("#a-head-canvas").bounding_box()
        pg.mouse.click(box["x"] + box["width"] * 3.5 / 4, box["y"] + box["height"] * 2.5 / 4)
        assert shown(pg, "a.token") == 1 + 2 * 4 + 3 and shown(pg, "b.token") == 1 + 1 * 2 + 1
        np.testing.assert_allclose(shown(pg, "b.head"), mb.attns[0][1, 0, 4, 1:].numpy(), atol=0.02)
    finally:
        pg.context.close()
