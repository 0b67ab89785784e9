"""`python -m vitlens.cli.predict` on the tiny project model, and the MLflow model the train stage
logs for it: plain pixels in, the same probabilities out, the run left RUNNING until the end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import CLASSES, registered_uri, run_cli
from vitlens.cli.models import FileModel, MlflowModel
from vitlens.cli.predict import main, run_predict
from vitlens.data.images import load_image
from vitlens.data.imageset import load_arrays
from vitlens.model.pixels import to_pixels
from vitlens.model.trained import load_trained
from vitlens.pipeline.train import run_training


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """main() in this process (no second torch import): exit status, stdout, stderr."""
    return run_cli(monkeypatch, capsys, main, *args)


@pytest.fixture(scope="module")
def test_images(cifar_npz) -> np.ndarray:
    """The first 8 test images, (8, 32, 32, 3) uint8."""
    return to_pixels(load_arrays(cifar_npz).x_test[:8])


@pytest.fixture
def pictures(tmp_path, test_images) -> Path:
    """Test images as files of every accepted format and mode, several sizes."""
    d = tmp_path / "pictures"
    d.mkdir()
    img = [Image.fromarray(x) for x in test_images]
    img[0].save(d / "0_rgb.png")
    rgba = img[1].convert("RGBA")
    rgba.putalpha(200)
    rgba.save(d / "1_rgba.png")
    img[2].convert("L").save(d / "2_grey.png")
    img[3].convert("P").save(d / "3_palette.png")
    img[4].save(d / "4.jpg", quality=95)
    img[5].save(d / "5.bmp")
    img[6].resize((200, 120)).save(d / "6_large.PNG")
    (d / "notes.txt").write_text("not a picture, and not named like one: skipped")
    return d


def expected_top1(project, x: np.ndarray) -> list[str]:
    """Top-1 classes straight from the model file, for (N, 32, 32, 3) uint8 pixels."""
    trained = load_trained(project / "models/model.pt", "cpu")
    nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = trained.vit(trained.norm(nchw))
    return [trained.classes[i] for i in logits.argmax(1)]


def test_a_png_loads_exactly_as_the_dataset_holds_it(pictures, test_images):
    small, _ = load_image(pictures / "0_rgb.png", 32)
    assert small.dtype == np.uint8 and np.array_equal(small, test_images[0])


def test_any_mode_becomes_rgb_transparency_white_and_the_centre_kept(tmp_path):
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # black, fully transparent
    clear.save(tmp_path / "clear.png")
    assert (load_image(tmp_path / "clear.png", 32)[0] == 255).all()
    Image.new("L", (32, 32), 77).save(tmp_path / "grey.png")
    assert (load_image(tmp_path / "grey.png", 32)[0] == 77).all()
    wide = np.zeros((64, 192, 3), np.uint8)
    wide[:, 64:128] = (0, 0, 255)  # blue centre square, black sides
    Image.fromarray(wide).save(tmp_path / "wide.bmp")
    small, picture = load_image(tmp_path / "wide.bmp", 32, picture=256)
    # Lanczos reads a little past the crop: the edge columns darken slightly, no more.
    assert small.shape == (32, 32, 3) and (small[..., 2] > 230).all() and (small[..., 0] < 5).all()
    assert picture.shape == (3, 64, 64)  # the square crop, never upscaled past the file


def test_predicts_files_and_folders_of_every_format(project, pictures, test_images,
                                                    monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, pictures, "--model", project / "models/model.pt",
                         "--json", "--top-k", "3")
    assert code == 0, err
    results = json.loads(out)
    assert [Path(r["image"]).name for r in results] == [
        "0_rgb.png", "1_rgba.png", "2_grey.png", "3_palette.png", "4.jpg", "5.bmp", "6_large.PNG"]
    for r in results:
        probs = [t["probability"] for t in r["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert {t["class"] for t in r["top_k"]} <= set(CLASSES)
    assert results[0]["top_k"][0]["class"] == expected_top1(project, test_images[:1])[0]


def test_text_output_and_batches_do_not_change_answers(project, pictures):
    model = FileModel(project / "models/model.pt", torch.device("cpu"))
    one, _ = run_predict(model, [pictures], top_k=10, batch_size=256)
    small, _ = run_predict(model, [pictures], top_k=10, batch_size=3)
    assert [r.image for r in one] == [r.image for r in small]
    for a, b in zip(one, small):
        assert [c for c, _ in a.top] == [c for c, _ in b.top]
        assert np.allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-5)
    assert sum(p for _, p in one[0].top) == pytest.approx(1, abs=1e-5)
    assert one[0].line().startswith(f"{pictures / '0_rgb.png'}: {one[0].top[0][0]} ")


def test_drawing_overlays_does_not_change_the_prediction(project, test_images, tmp_path):
    rng = np.random.default_rng(0)
    big = np.kron(test_images[0], np.ones((40, 50, 1), np.uint8))  # 1280x1600, a large photo
    noisy = np.clip(big + rng.normal(0, 20, big.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "photo.jpg", quality=90)
    model = FileModel(project / "models/model.pt", torch.device("cpu"))
    plain, _ = run_predict(model, [tmp_path / "photo.jpg"], top_k=10)
    drawn, _ = run_predict(model, [tmp_path / "photo.jpg"], top_k=10, out=tmp_path / "out")
    assert plain[0].top == drawn[0].top and drawn[0].overlay


def test_bad_files_get_one_line_each_and_the_good_ones_are_predicted(project, tmp_path, pictures):
    bad = tmp_path / "bad"
    bad.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad / "good.png")
    (bad / "text.png").write_text("hello")
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "cut.png").write_bytes((pictures / "6_large.PNG").read_bytes()[:300])
    Image.new("RGB", (8, 8)).save(bad / "icon.ico")  # a picture, of a format not taken
    Image.new("RGB", (8, 8)).save(bad / "ico_named.bmp", format="ICO")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "vitlens.cli.predict", str(bad), str(bad / "icon.ico"),
                        str(empty), str(tmp_path / "missing.png"),
                        "--model", str(project / "models/model.pt")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert [Path(line.split(": ")[0]).name for line in r.stdout.splitlines()] == ["good.png"]
    errors = r.stderr.strip().splitlines()
    reasons = {Path(line.split(": ")[1]).name: line for line in errors}
    assert len(errors) == len(reasons) == 7, r.stderr
    assert "empty file" in reasons["empty.jpg"]
    assert "not an image" in reasons["text.png"]
    assert "unreadable" in reasons["cut.png"]
    assert "ICO image, not PNG, JPEG, BMP, GIF, WebP or TIFF" in reasons["icon.ico"]
    assert "ICO image" in reasons["ico_named.bmp"]
    assert "no PNG, JPEG, BMP, GIF, WebP or TIFF files" in reasons["empty_dir"]
    assert "no such file" in reasons["missing.png"]


def test_a_missing_model_says_what_to_run(tmp_path, pictures, monkeypatch, capsys, mlflow_store):
    code, out, err = cli(monkeypatch, capsys, pictures, "--model", tmp_path / "model.pt")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"error: {tmp_path / 'model.pt'} not found: run the train stage first (dvc repro train)"]
    code, _, err = cli(monkeypatch, capsys, pictures, "--model-uri", "models:/no-such-model/1")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "cannot load MLflow model models:/no-such-model/1" in err and "runs:/<run_id>/model" in err


def test_overlays_one_png_per_picture(project, pictures, tmp_path, monkeypatch, capsys):
    (pictures / "sub").mkdir()  # subfolders are not searched
    Image.new("RGB", (32, 32)).save(pictures / "sub" / "0_rgb.png")
    out_dir = tmp_path / "overlays"
    code, out, err = cli(monkeypatch, capsys, pictures, pictures / "sub" / "0_rgb.png", "--json",
                         "--out", out_dir, "--model", project / "models/model.pt")
    assert code == 0, err
    written = [r["overlay"] for r in json.loads(out)]
    assert len(written) == 8 and written[-1] == str(out_dir / "0_rgb-1.png")
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(Path(w).name for w in written)
    with Image.open(written[6]) as img:
        assert img.format == "PNG" and img.width > 400
    code, _, err = cli(monkeypatch, capsys, pictures, "--out", out_dir, "--model-uri", "runs:/x/model")
    assert code == 1 and "--out and --report need the model file" in err


# The MLflow model the train stage logs.

@pytest.fixture(scope="module")
def staged(tmp_path_factory, tiny_params_module, cifar_npz, mlflow_store):
    """The train stage, then the publish stage with its log_model watched: the run's status
    right after it, and what publish wrote."""
    from mlflow.tracking import MlflowClient

    from vitlens.pipeline import publish
    root = tmp_path_factory.mktemp("staged")
    seen = {}
    real = publish.log_model

    def watched(run, *args, **kwargs):
        uri = real(run, *args, **kwargs)
        seen.update(uri=uri, status=MlflowClient().get_run(run.id).info.status)
        return uri
    run_training(tiny_params_module, cifar_npz, root / "model.pt", root / "history.csv",
                 root / "ckpt.pt")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params_module.to_dict()))
    mp = pytest.MonkeyPatch()
    mp.setattr(publish, "log_model", watched)
    try:
        seen["published"] = publish.run_publish(root / "params.yaml", root / "model.pt", cifar_npz,
                                                root / "published.json")
    finally:
        mp.undo()
    rec = torch.load(root / "model.pt", weights_only=True)
    return root, rec["mlflow_run_id"], seen


@pytest.fixture(scope="module")
def tiny_params_module(_params_raw, train_archive):
    import copy

    from conftest import shrink
    from vitlens.config import parse_params
    raw = shrink(copy.deepcopy(_params_raw), train_archive)
    raw["train"]["epochs"] = 1
    return parse_params(raw)


def test_publish_registers_the_model_in_the_finished_training_run(staged):
    """Publishing logs into the run training finished, and leaves it FINISHED."""
    import json

    from mlflow.tracking import MlflowClient
    root, run_id, seen = staged
    assert seen["status"] == "FINISHED"
    assert seen["uri"] == registered_uri(run_id) == seen["published"]["model_uri"]
    assert json.loads((root / "published.json").read_text()) == {"run_id": run_id, "model_uri": seen["uri"]}
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_logged_model_takes_uint8_pixels_and_a_real_test_image(staged, cifar_npz):
    import mlflow.pyfunc
    from mlflow.models import Model
    _, run_id, seen = staged
    model = mlflow.pyfunc.load_model(seen["uri"])
    inputs = model.metadata.get_input_schema().inputs[0]
    assert (inputs.type, inputs.shape) == (np.dtype("uint8"), (-1, 32, 32, 3))
    assert model.metadata.metadata["classes"] == CLASSES
    local = mlflow.artifacts.download_artifacts(seen["uri"])
    example = Model.load(local).load_input_example(local)
    assert example.dtype == np.uint8
    assert np.array_equal(example, to_pixels(load_arrays(cifar_npz).x_test[:2]))


def test_model_uri_gives_the_probabilities_of_the_model_file(staged, test_images):
    root, run_id, seen = staged
    served = MlflowModel(seen["uri"])
    local = FileModel(root / "model.pt", torch.device("cpu"))
    for n in (1, 3, 8):  # the exported batch size is not fixed by the 2-image example
        assert np.allclose(served.probabilities(test_images[:n]),
                           local.probabilities(test_images[:n]), atol=1e-5)
    assert served.classes == local.classes == CLASSES
    by_run = MlflowModel(f"runs:/{run_id}/model")
    assert np.allclose(by_run.probabilities(test_images), local.probabilities(test_images),
                       atol=1e-5)
