"""The attention explorer in real headless Chromium, network blocked: what the page shows after
real clicks, hovers and key presses must equal what Python computed."""
import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import open_page
from vitlens.data.normalize import Normalizer
from vitlens.explain.maps import compute_maps
from vitlens.model.trained import Trained
from vitlens.model.vit import ViT
from vitlens.report import data as explorer
from vitlens.report.page import render, write_explorer

GRID, HEADS, LAYERS, N_IMAGES = 4, 4, 2, 12
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    vit = ViT(image_size=32, patch_size=8, num_classes=10, dim=32, depth=LAYERS, heads=HEADS,
              mlp_ratio=2.0).eval()
    with torch.no_grad():  # sharper attention than at init (near uniform): heads and patches differ visibly
        for block in vit.blocks:
            block.attn.qkv.weight[:64] *= 3  # the query and key rows (dim 32 each)
    params = {"model": {"image_size": 32, "patch_size": 8, "depth": LAYERS, "heads": HEADS, "dim": 32},
              "train": {"lr": 0.002}}
    return Trained(vit=vit, norm=Normalizer([0.5] * 3, [0.25] * 3), classes=CLASSES, run_id="",
                   params=params, record={"history": []}, device=torch.device("cpu"), bf16=False)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_IMAGES, 3, 32, 32), dtype=np.uint8)
    truth = [int(t) for t in rng.integers(0, 3, N_IMAGES)]  # few classes: every one has several
    snaps = {"epochs": [1, 2, 3], "images": torch.from_numpy(images[:2]), "truth": truth[:2],
             "rollout": torch.rand(3, 2, GRID, GRID), "heads": torch.rand(3, 2, HEADS, GRID, GRID)}
    return images, truth, snaps


@pytest.fixture(scope="module")
def doc(trained, inputs):
    images, truth, snaps = inputs
    history = [{"epoch": e, "train_loss": 2 - e / 3, "val_loss": 2.1 - e / 3, "train_acc": e / 4,
                "val_acc": e / 5} for e in (1, 2, 3)]
    history[0]["val_loss"] = float("nan")  # a diverged value: JSON has no NaN, the page must still open
    trained.record["history"] = history
    return explorer.document(
        trained, title="test report", kind="run",
        gallery=explorer.gallery(trained, images, [f"test #{i}" for i in range(N_IMAGES)], truth,
                                 layers=[0, 1], heads=[0, 1, 2, 3], batch_size=5),
        class_means=explorer.class_means(trained, images, truth, batch_size=5),
        training=explorer.training(snaps),
        facts=explorer.facts(trained, defaults={"model": {"dim": 384}, "train": {"lr": 0.001}},
                             metrics={"accuracy": 0.5}, faithfulness=None, distance=None,
                             position_warn=0.5))


@pytest.fixture(scope="module")
def html_path(doc, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("explorer") / "index.html"
    write_explorer(path, doc)
    return path


@pytest.fixture(scope="module")
def page(browser, html_path):
    pg = open_page(browser, html_path)
    yield pg
    pg.context.close()


def attention_tol(a: np.ndarray) -> np.ndarray:
    """The sqrt encoding's worst error: q = round(L sqrt(a)) is within 1/(2L) of L sqrt(a), so
    |a - (q/L)^2| <= sqrt(a)/L + 1/(2L)^2."""
    levels = explorer.ATTENTION_LEVELS
    return np.sqrt(a) / levels + 1 / (2 * levels) ** 2 + 1e-6


def shown(page, what):
    return page.evaluate(f"window.vitlens.{what}")


def pixel(page, canvas: str, x: float, y: float) -> list[int]:
    return page.evaluate(f"""() => {{ const c = document.querySelector('{canvas}');
        return Array.from(c.getContext('2d').getImageData({x}, {y}, 1, 1).data); }}""")


def test_the_page_loads_fast_with_no_error_and_no_network(page, html_path, capsys):
    assert page.errors == [] and page.blocked == []
    assert page.requests == [html_path.as_uri()]  # the file itself, nothing else
    assert shown(page, "ready") is True
    ms = shown(page, "loadMs")
    with capsys.disabled():
        print(f"\nexplorer {html_path.stat().st_size / 1024:.0f} KiB, ready {ms:.0f} ms after navigation")
    assert ms < 2000


def test_hovering_a_patch_highlights_the_argmax_of_its_attention_row(page, trained, inputs, doc):
    images, _, _ = inputs
    k, layer, head = 3, 1, 2
    page.locator(f"[data-testid=thumb][data-index='{k}']").click()
    page.select_option("#layer", str(layer))
    page.select_option("#head", str(head))
    stored = explorer.unpack_attention(doc["images"]["attention"])  # what the page decodes
    exact = compute_maps(trained.vit, trained.norm(torch.from_numpy(images)), grad=False).attns
    # Off the diagonal (row != column, so a swapped mouse mapping shows), and a top weight
    # unique after quantisation, so the argmax is well defined.
    for p in (q for q in range(GRID * GRID) if q // GRID != q % GRID):
        row = stored[k, layer, head, 1 + p, 1:]
        if (row == row.max()).sum() == 1:
            break
    page.locator("#head-canvas").scroll_into_view_if_needed()
    box = page.locator("#head-canvas").bounding_box()
    cell = box["width"] / GRID
    page.mouse.move(box["x"] + (p % GRID + 0.5) * cell, box["y"] + (p // GRID + 0.5) * cell)
    assert shown(page, "state.token") == 1 + p
    top = shown(page, "shown.top")
    assert top == int(np.argmax(row))
    np.testing.assert_allclose(shown(page, "shown.head"), row, atol=1e-6)
    want = exact[layer][k, head, 1 + p, 1:].numpy()
    assert (np.abs(row - want) <= attention_tol(want)).all()
    # The drawn top-1 outline (#00e5ff) sits on that patch, in canvas pixels.
    px = page.evaluate("document.querySelector('#head-canvas').width") / GRID
    r, g, b, _ = pixel(page, "#head-canvas", (top % GRID) * px + 3, (top // GRID + 0.5) * px)
    assert (r, g, b) == (0, 229, 255)


def test_the_selected_maps_are_pythons(page, trained, inputs):
    images, _, _ = inputs
    k = 5
    page.locator(f"[data-testid=thumb][data-index='{k}']").click()
    m = compute_maps(trained.vit, trained.norm(torch.from_numpy(images[k:k + 1])))
    for kind, want in [("grad_rollout", m.grad_rollout), ("head:1", m.heads[:, 1]), ("last_layer", m.last_layer),
                       ("rollout", m.rollout)]:
        page.locator(f"[data-testid=map-choice][data-kind='{kind}']").click()  # the strip of every map
        assert page.locator("#map-kind").input_value() == kind
        got = np.array(shown(page, "shown.main.values"))
        want = want[0].flatten().numpy()
        np.testing.assert_allclose(got, want, atol=want.max() / 250, err_msg=kind)
    page.select_option("#map-kind", "head:3")
    np.testing.assert_allclose(shown(page, "shown.main.values"), m.heads[0, 3].flatten().numpy(),
                               atol=float(m.heads[0, 3].max()) / 250)


def test_the_class_means_are_the_mean_rollout_of_each_class(page, trained, inputs, doc):
    images, truth, _ = inputs
    rollout = compute_maps(trained.vit, trained.norm(torch.from_numpy(images)), grad=False).rollout
    y = np.array(truth)
    for c in range(len(CLASSES)):
        got = np.array(shown(page, f"shown.classMean[{c}]"))
        want = rollout[y == c].mean(dim=0).flatten().numpy() if (y == c).any() else np.zeros(GRID**2)
        np.testing.assert_allclose(got, want, atol=max(want.max(), 1e-9) / 250, err_msg=CLASSES[c])
        counts = page.locator(f"[data-testid=class-mean][data-class='{c}']").inner_text()
        assert f"(n={(y == c).sum()})" in counts


def test_the_epoch_slider_shows_each_epochs_stored_maps(page, inputs):
    _, _, snaps = inputs
    slider = page.locator("#epoch")
    slider.focus()
    previous = None
    for e in range(3):
        if e:
            page.keyboard.press("ArrowRight")
        got = np.array(shown(page, "shown.epoch.maps"))
        assert shown(page, "shown.epoch.epoch") == e + 1
        want = snaps["rollout"][e].reshape(2, -1).numpy()
        np.testing.assert_allclose(got, want, atol=1 / 250)
        if previous is not None:
            assert not np.allclose(got, previous)
        previous = got
    assert "epoch 3 of 3" in page.locator("#epoch-label").inner_text()
    page.select_option("#snap-kind", "head:2")  # the last layer's head 3 at that epoch
    np.testing.assert_allclose(shown(page, "shown.epoch.maps"), snaps["heads"][2, :, 2].reshape(2, -1).numpy(),
                               atol=1 / 250)
    page.select_option("#snap-kind", "rollout")


def test_filters_show_exactly_the_matching_images(page, inputs, doc):
    _, truth, _ = inputs
    pred = doc["images"]["pred"]
    page.select_option("#filter-correct", "all")
    for c in range(3):
        page.select_option("#filter-class", str(c))
        assert shown(page, "shown.gallery") == [k for k in range(N_IMAGES) if truth[k] == c]
        assert page.locator("[data-testid=thumb]").count() == truth.count(c)
    page.select_option("#filter-class", "all")
    page.select_option("#filter-correct", "wrong")
    wrong = [k for k in range(N_IMAGES) if truth[k] != pred[k]]
    assert shown(page, "shown.gallery") == wrong and wrong
    assert page.locator("[data-testid=thumb].wrong").count() == len(wrong)
    page.select_option("#filter-correct", "all")


def test_clicking_a_model_view_cell_opens_it_in_the_head_view(page, doc):
    page.locator("[data-testid=model-cell][data-layer='0'][data-head='3']").click()
    assert shown(page, "state.layer") == 0 and shown(page, "state.head") == 3
    assert shown(page, "state.token") == 0  # the CLS query, as the cell drew it
    k = shown(page, "state.k")
    stored = explorer.unpack_attention(doc["images"]["attention"])
    np.testing.assert_allclose(shown(page, "shown.head"), stored[k, 0, 3, 0, 1:], atol=1e-6)
    assert page.locator("#layer").input_value() == "0" and page.locator("#head").input_value() == "3"


def test_the_runs_facts_show_its_accuracy_params_and_curves(page, doc):
    box, diff = page.locator("#facts-section"), doc["facts"]["params_diff"]
    assert box.get_by_test_id("test-accuracy").inner_text() == "test accuracy 50.0%"
    rows = box.locator("table").first.locator("tr")
    assert diff and rows.count() == 1 + len(diff)
    assert [rows.nth(i + 1).locator("td").first.inner_text() for i in range(len(diff))] == [d[0] for d in diff]
    curves = box.get_by_test_id("curve")
    assert curves.count() == 2, "loss and accuracy"
    # one point per finite value: the diverged (NaN) val_loss of epoch 1 is left out
    lines = curves.nth(0).locator("polyline[stroke-width='2']").all()
    assert [len(line.get_attribute("points").split()) for line in lines] == [3, 2]


def test_packing_round_trips_within_a_quantisation_step():
    x = np.random.default_rng(1).random((3, 2, GRID, GRID))
    back = explorer.unpack(explorer.pack(x))
    assert np.abs(back - x).max() <= x.max() / 510 + 1e-9
    a = torch.softmax(torch.randn(2, 3, 17, 17) * 3, dim=-1).numpy()
    err = np.abs(explorer.unpack_attention(explorer.pack_attention(a)) - a)
    assert (err <= np.sqrt(a) / 31 + 1 / 63**2).all()


def test_pictures_show_the_gallery_and_maps_only(browser, trained, inputs, tmp_path):
    images, _, _ = inputs
    names = ["a.png", "b.png", "c.png"]
    gal = explorer.gallery(trained, images[:3], names, [None] * 3, layers=[1], heads=[0, 2], batch_size=2)
    path = tmp_path / "index.html"
    write_explorer(path, explorer.document(trained, title="pictures", kind="pictures", gallery=gal))
    pg = open_page(browser, path)
    try:
        assert pg.errors == [] and pg.blocked == []
        for hidden in ("class-section", "training-section", "facts-section", "filter-correct"):
            assert pg.locator(f"#{hidden}").count() == 0, hidden
        assert pg.locator("[data-testid=thumb]").count() == 3 and pg.locator(".thumb.wrong").count() == 0
        # Only layer 2's heads 1 and 3 are stored: the cell of the second is head 3.
        pg.locator("[data-testid=model-cell][data-layer='0'][data-head='1']").click()
        assert "layer 2 · head 3" in pg.locator("#head-info").inner_text()
        attns = compute_maps(trained.vit, trained.norm(torch.from_numpy(images[:1])), grad=False).attns
        want, other = attns[1][0, 2, 0, 1:].numpy(), attns[1][0, 0, 0, 1:].numpy()
        assert (np.abs(np.array(shown(pg, "shown.head")) - want) <= attention_tol(want)).all()
        assert not (np.abs(other - want) <= attention_tol(want)).all()  # another head would show
    finally:
        pg.context.close()


def test_a_mean_pool_models_views_read_the_patch_mean(browser, trained, inputs, tmp_path):
    """model.pool=mean: the model view draws the mean of the patch rows, what the head reads,
    and a clicked cell opens that readout in the head view, not the CLS row."""
    images, _, _ = inputs
    vit = ViT(image_size=32, patch_size=8, num_classes=10, dim=32, depth=LAYERS, heads=HEADS,
              mlp_ratio=2.0, pool="mean").eval()
    vit.load_state_dict(trained.vit.state_dict())
    mean = dataclasses.replace(trained, vit=vit)
    gal = explorer.gallery(mean, images[:2], ["a", "b"], [0, 1], layers=[0, 1], heads=[0, 1, 2, 3],
                           batch_size=2)
    path = tmp_path / "index.html"
    write_explorer(path, explorer.document(mean, title="mean pool", kind="pictures", gallery=gal))
    pg = open_page(browser, path)
    try:
        assert pg.errors == []
        assert "mean attention" in pg.locator("#model-section h2").inner_text()
        attns = compute_maps(vit, mean.norm(torch.from_numpy(images[:1])), grad=False).attns
        for li, hi in ((0, 1), (1, 3)):
            rows = attns[li][0, hi, 1:, 1:].numpy()  # (P, P): every patch query's row
            want, tol = rows.mean(0), attention_tol(rows).mean(0)
            got = np.array(shown(pg, f"shown.model[{li}][{hi}]"))
            assert (np.abs(got - want) <= tol).all()
            cls_row = attns[li][0, hi, 0, 1:].numpy()
            assert not (np.abs(cls_row - want) <= tol).all()  # the CLS row would show
        pg.locator("[data-testid=model-cell][data-layer='1'][data-head='3']").click()
        assert shown(pg, "state.token") == -1
        np.testing.assert_allclose(shown(pg, "shown.head"), shown(pg, "shown.model[1][3]"))
        assert "mean of the patches" in pg.locator("#head-info").inner_text()
    finally:
        pg.context.close()


def test_the_page_is_one_file_with_its_json_safe_inside(doc):
    html = render({**doc, "meta": {**doc["meta"], "title": "</script><b>x"}})
    assert html.count("<script") == 2 and "</script><b>" not in html
    assert html.count("<html") == 1 and "<link" not in html and "@import" not in html
    # Nothing loaded from elsewhere: no src/href/url() pointing off the page (data: URLs are inline).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//""", html)
    assert "https://" not in html


def explorer_doc(path: Path) -> dict:
    """The document a written page carries."""
    import json

    text = path.read_text()
    m = re.search(r'<script type="application/json" id="vitlens-data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_predict_writes_the_explorer_of_the_good_pictures(project, tmp_path, capsys):
    from PIL import Image

    from vitlens.cli.models import FileModel
    from vitlens.cli.predict import run_predict

    pics = tmp_path / "pics"
    pics.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(pics / name)
    (pics / "broken.png").write_text("not an image")
    model = FileModel(project / "models/model.pt", "cpu")
    results, errors = run_predict(model, [pics], report=tmp_path / "report")
    assert [Path(e.split(": ")[0]).name for e in errors] == ["broken.png"]
    doc = explorer_doc(tmp_path / "report" / "index.html")
    assert doc["meta"]["kind"] == "pictures" and doc["images"]["labels"] == ["a.png", "b.jpg"]
    assert doc["images"]["truth"] == [None, None]
    assert [model.classes[p] for p in doc["images"]["pred"]] == [r.top[0][0] for r in results]
    assert doc["class_means"] is None and doc["training"] is None and doc["facts"] is None
    layers, heads = len(model.trained.vit.blocks), model.trained.params["model"]["heads"]
    assert doc["images"]["attention"]["shape"][:3] == [2, layers, heads]


def test_the_report_stage_writes_the_explorer_and_logs_it(project, cifar_npz, tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    from vitlens.model.trained import load_trained
    from vitlens.pipeline.report import run_report

    out = tmp_path / "explorer" / "index.html"
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"accuracy": 0.75}')
    run_report(project / "params.yaml", project / "models/model.pt", cifar_npz, out, metrics=metrics)
    doc = explorer_doc(out)
    assert len(doc["images"]["labels"]) == 12 and doc["facts"]["test_accuracy"] == 0.75
    assert sum(doc["class_means"]["counts"]) == 60  # report.class_images of the shrunk params
    assert doc["training"]["epochs"] == [1, 2, 3] and len(doc["training"]["truth"]) == 4
    assert len(doc["facts"]["history"]) == 3
    run_id = load_trained(project / "models/model.pt", "cpu").run_id
    assert [a.path for a in MlflowClient().list_artifacts(run_id, "explorer")] == ["explorer/index.html"]


def commit_params(repo: Path, raw: dict) -> None:
    """`raw` as params.yaml, committed in a new git repository at `repo`."""
    import subprocess

    import yaml

    repo.mkdir(parents=True, exist_ok=True)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "params.yaml"], ["commit", "-q", "-m", "params"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True, capture_output=True)


def test_a_committed_params_yaml_from_before_a_key_skips_the_diff(project, cifar_npz, tmp_path,
                                                                    monkeypatch, capsys):
    """The committed params.yaml (the diff's defaults) may lack a key a newer commit of the
    code added: the report page is still written, without the diff."""
    import copy

    import yaml

    from vitlens.pipeline.report import default_params, run_report

    raw = yaml.safe_load((project / "params.yaml").read_text())
    commit_params(tmp_path / "good", raw)
    assert default_params(tmp_path / "good") == raw  # a git checkout with valid params: the defaults
    older = copy.deepcopy(raw)
    del older["report"]["class_images"]
    commit_params(tmp_path / "old", older)
    assert default_params(tmp_path / "old") is None
    assert "no params diff: the committed params.yaml does not parse (report.class_images is missing)" \
        in capsys.readouterr().out

    mine = copy.deepcopy(raw)
    mine["tracking"]["enabled"] = False
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(mine, sort_keys=False))
    monkeypatch.chdir(tmp_path / "old")  # the stage reads the committed params.yaml of its cwd
    out = tmp_path / "explorer" / "index.html"
    run_report(params, project / "models/model.pt", cifar_npz, out)
    doc = explorer_doc(out)
    assert doc["facts"]["params_diff"] is None and len(doc["images"]["labels"]) == 12


def other_model(classes: list[str], size: int, patch: int) -> Trained:
    """An untrained model of `classes` on `size`-pixel pictures, cut in `patch`-pixel patches."""
    torch.manual_seed(1)
    vit = ViT(image_size=size, patch_size=patch, num_classes=len(classes), dim=32, depth=LAYERS,
              heads=HEADS, mlp_ratio=2.0).eval()
    params = {"model": {"image_size": size, "patch_size": patch, "depth": LAYERS, "heads": HEADS, "dim": 32},
              "train": {"lr": 0.002}}
    return Trained(vit=vit, norm=Normalizer([0.5] * 3, [0.25] * 3), classes=classes, run_id="",
                   params=params, record={"history": []}, device=torch.device("cpu"), bf16=False)


def other_page(browser, tmp_path, model: Trained, truth: list[int], mean_labels: list[int]):
    """The page of `model` over random pictures: a gallery of len(truth) and class means over
    len(mean_labels) of them; returns the page, the pictures and the document."""
    size = model.image_size
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (max(len(truth), len(mean_labels)), 3, size, size), dtype=np.uint8)
    doc = explorer.document(
        model, title="other classes", kind="run",
        gallery=explorer.gallery(model, images[:len(truth)], [f"pic {i}" for i in range(len(truth))], truth,
                                 layers=[0, 1], heads=[0, 1, 2, 3], batch_size=16),
        class_means=explorer.class_means(model, images[:len(mean_labels)], mean_labels, batch_size=16))
    path = tmp_path / "index.html"
    write_explorer(path, doc)
    return open_page(browser, path), images, doc


def filter_options(pg) -> list[tuple[str, str]]:
    return pg.eval_on_selector_all("#filter-class option", "os => os.map(o => [o.value, o.textContent])")


HUNDRED = [f"kind_{i:03d}" for i in range(100)]


@pytest.fixture(scope="module")
def hundred(browser, tmp_path_factory):
    """100 classes of 64-pixel pictures: a gallery of 40 (classes 0-9 twice, 50-69 once) and
    class means over 150 pictures, classes 95-99 without any."""
    truth = [i % 10 for i in range(20)] + list(range(50, 70))
    means = [i % 95 for i in range(150)]
    model = other_model(HUNDRED, 64, 8)
    pg, images, doc = other_page(browser, tmp_path_factory.mktemp("hundred"), model, truth, means)
    yield SimpleNamespace(pg=pg, model=model, images=images, doc=doc, truth=truth, means=means)
    pg.context.close()


def test_a_hundred_classes_filter_as_one_control(hundred):
    pg, truth = hundred.pg, hundred.truth
    assert pg.errors == [] and pg.blocked == []
    options = filter_options(pg)
    assert options[0] == ["all", "all classes"] and len(options) == 101
    assert [v for v, _ in options[1:]] == [str(i) for i in range(100)]
    assert [t for _, t in options[1:]] == [f"{c} ({truth.count(i)})" for i, c in enumerate(HUNDRED)]
    assert pg.locator("#gallery-section select, #gallery-section button").count() == 2  # no button per class
    for c in (3, 57, 99):
        pg.select_option("#filter-class", str(c))
        want = [k for k, t in enumerate(truth) if t == c]
        assert shown(pg, "shown.gallery") == want
        assert [int(t.get_attribute("data-index")) for t in pg.locator("[data-testid=thumb]").all()] == want
        assert pg.locator("#gallery-count").inner_text() == f"{len(want)} of 40 shown ({HUNDRED[c]})"
    pg.select_option("#filter-class", "all")
    assert len(shown(pg, "shown.gallery")) == 40


def test_the_find_box_narrows_the_class_filter_and_enter_picks_the_first(hundred):
    pg, truth = hundred.pg, hundred.truth
    pg.fill("#class-find", "KIND_06")  # any case
    assert shown(pg, "shown.classOptions") == list(range(60, 70))
    hidden = pg.eval_on_selector_all("#filter-class option", "os => os.filter(o => o.hidden).length")
    assert hidden == 90
    pg.press("#class-find", "Enter")
    assert pg.locator("#filter-class").input_value() == "60" and shown(pg, "state.cls") == "60"
    assert shown(pg, "shown.gallery") == [truth.index(60)]
    pg.fill("#class-find", "")
    assert len(shown(pg, "shown.classOptions")) == 100
    pg.select_option("#filter-class", "all")


def test_a_hundred_class_means_scroll_narrow_and_open_the_gallery(hundred):
    pg, model, truth = hundred.pg, hundred.model, hundred.truth
    cells = pg.locator("[data-testid=class-mean]")
    assert cells.count() == 100
    m = compute_maps(model.vit, model.norm(torch.from_numpy(hundred.images[:150])), grad=False).rollout
    y = np.array(hundred.means)
    for c in (0, 42, 94):
        want = m[y == c].mean(dim=0).flatten().numpy()
        np.testing.assert_allclose(shown(pg, f"shown.classMean[{c}]"), want, atol=want.max() / 250)
        assert cells.nth(c).inner_text() == f"{HUNDRED[c]} (n={(y == c).sum()})"
    assert cells.nth(97).inner_text() == "kind_097 (n=0)" and "empty" in cells.nth(97).get_attribute("class")
    box = pg.locator("#class-means")
    height, scroll = box.evaluate("b => [b.clientHeight, b.scrollHeight]")
    assert height <= 400 < scroll  # a box that scrolls, not ten screens of maps
    pg.fill("#class-mean-find", "kind_04")
    assert pg.locator("[data-testid=class-mean]:visible").count() == 10
    assert pg.locator("#class-mean-count").inner_text() == "10 of 100 classes"
    pg.locator("[data-testid=class-mean][data-class='45']").click()
    assert shown(pg, "state.cls") == "45" and pg.locator("#filter-class").input_value() == "45"
    assert shown(pg, "shown.gallery") == []  # no gallery picture of class 45
    pg.fill("#class-mean-find", "kind_06")
    pg.locator("[data-testid=class-mean][data-class='61']").click()
    assert shown(pg, "shown.gallery") == [truth.index(61)]
    pg.fill("#class-mean-find", "")
    assert pg.locator("[data-testid=class-mean]:visible").count() == 100
    pg.select_option("#filter-class", "all")


FLOWERS = ["rose", "tulip", "daisy", "iris", "lily"]


def test_five_classes_of_other_names_on_96_pixel_pictures(browser, tmp_path):
    """The classes and the patch grid (96 / 8 = 12 a side) come from the model: five named
    classes in the filter and the class means, maps of 144 patches, edges on whole pixels."""
    truth = [0, 1, 2, 3, 4, 2, 2, 0]
    model = other_model(FLOWERS, 96, 8)
    pg, images, _ = other_page(browser, tmp_path, model, truth, [0, 1, 2, 3, 4] * 4)
    try:
        assert pg.errors == [] and pg.blocked == []
        assert "8 images of 96px · 5 classes" in pg.locator("header small").inner_text()
        assert "12×12 patches of 8px" in pg.locator("header small").inner_text()
        assert filter_options(pg) == [["all", "all classes"], ["0", "rose (2)"], ["1", "tulip (1)"],
                                      ["2", "daisy (3)"], ["3", "iris (1)"], ["4", "lily (1)"]]
        pg.select_option("#filter-class", "2")
        assert shown(pg, "shown.gallery") == [2, 5, 6]
        assert pg.locator("[data-testid=class-mean]").all_inner_texts() == [f"{c} (n=4)" for c in FLOWERS]
        assert pg.locator("#class-mean-find, #class-find").count() == 0  # five classes need no search
        pg.locator("[data-testid=thumb][data-index='5']").click()
        m = compute_maps(model.vit, model.norm(torch.from_numpy(images[5:6])), grad=False).rollout
        got = np.array(shown(pg, "shown.main.values"))
        assert got.shape == (144,)
        np.testing.assert_allclose(got, m.flatten().numpy(), atol=float(m.max()) / 250)
        # Opaque maps: every pixel of a 64-pixel thumbnail of the 12x12 map is its patch's
        # colour; cells of 5.33 pixels drawn at fractional edges would blend at the seams.
        pg.locator("#opacity").evaluate("o => { o.value = 1; o.dispatchEvent(new Event('input')); }")
        px = np.array(pg.evaluate("""() => { const c = document.querySelector("[data-kind='rollout'] canvas");
            return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }"""))
        px = px.reshape(64, 64, 4)
        edges = np.round(np.arange(13) * 64 / 12).astype(int)
        patch = np.searchsorted(edges, np.arange(64), side="right") - 1  # the patch of each pixel row/column
        centre = (edges[:-1] + edges[1:]) // 2
        want = px[centre[patch]][:, centre[patch]]
        assert np.abs(px.astype(int) - want).max() == 0
    finally:
        pg.context.close()


def test_the_page_opens_on_the_map_the_runs_scores_trust_and_warns_of_the_others(
        browser, trained, inputs, tmp_path):
    """Not a fixed choice: the lowest deletion AUC leads and the page says why; a map bound to
    a place (position bias past faithfulness.position_warn) carries a warning where it is drawn."""
    images, truth, _ = inputs

    def s(auc, bias=0.0):
        return {"deletion_auc": auc, "deletion_low": auc - 0.01, "deletion_high": auc + 0.01,
                "insertion_auc": 0.6, "position_bias": bias}
    scores = {"images": 12, "rollout": s(0.33, bias=0.7), "grad_rollout": s(0.24),
              "last_layer": s(0.30), "random": s(0.37)}
    doc = explorer.document(
        trained, title="trusted", kind="run",
        gallery=explorer.gallery(trained, images[:3], ["a", "b", "c"], truth[:3], layers=[0], heads=[0],
                                 batch_size=3),
        facts=explorer.facts(trained, defaults=None, metrics=None, faithfulness=scores, distance=None,
                             position_warn=0.5))
    path = tmp_path / "index.html"
    write_explorer(path, doc)
    pg = open_page(browser, path)
    try:
        assert pg.errors == []
        assert shown(pg, "state.map") == "grad_rollout"
        assert pg.locator("#map-kind").input_value() == "grad_rollout"
        assert "opened on gradient-weighted rollout: this run's best deletion AUC (0.240)" in \
            pg.locator("[data-testid=opened-on]").inner_text()
        assert pg.locator("[data-testid=map-warning]").inner_text() == ""
        assert pg.locator("[data-testid=map-choice][data-kind=rollout]").inner_text().startswith("⚠")
        pg.locator("[data-testid=map-choice][data-kind=rollout]").click()
        assert "position bias 0.70" in pg.locator("[data-testid=map-warning]").inner_text()
    finally:
        pg.context.close()


def test_class_means_share_one_scale_and_show_what_is_specific_to_each_class(page, doc):
    """One colour scale across classes (not each stretched min to max), and beside each mean
    that mean minus the mean over all the images: the counts-weighted differences cancel."""
    means = doc["class_means"]
    counts = np.array(means["counts"], dtype=float)
    maps = np.array([shown(page, f"shown.classMean[{i}]") for i in range(len(counts))])
    lo, hi = shown(page, "shown.classScale")
    kept = counts > 0
    assert lo == pytest.approx(maps[kept].min()) and hi == pytest.approx(maps[kept].max())
    diffs = np.array([shown(page, f"shown.classDiff[{i}]") for i in range(len(counts))])
    np.testing.assert_allclose(diffs, maps - (counts @ maps) / counts.sum(), atol=1e-6)
    np.testing.assert_allclose(counts @ diffs, 0, atol=1e-5)
    assert page.locator("[data-testid=class-mean] canvas").count() == 2 * len(counts)
    # Drawn on that scale: a class whose peak is below the top of it never reaches the top colour.
    g = doc["meta"]["grid"]
    dimmest = min(np.flatnonzero(kept), key=lambda i: maps[i].max())
    assert maps[dimmest].max() < hi - 1e-3
    p = int(maps[dimmest].argmax())
    x, y = (p % g + 0.5) * 96 / g, (p // g + 0.5) * 96 / g
    assert pixel(page, f'[data-testid=class-mean][data-class="{dimmest}"] canvas', x, y)[:3] != [252, 255, 164]
