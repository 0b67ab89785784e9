"""A folder of the user's own pictures through the whole pipeline, as users drive it: `dvc
repro` at 64 pixels with the folder's class names everywhere, then DVC's view of the folder:
adding, changing or deleting one picture stales the first stage (whose record every other
stage reads), touching nothing nothing."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dvcrepo import STAGES, dvc, make_repo, sh, stages_run
from vitlens.cli.models import FileModel
from vitlens.cli.predict import run_predict

pytestmark = pytest.mark.slow

CLASSES = ["apple", "kiwi", "lemon", "plum"]  # sorted, as the folder names are
COLOURS = [(200, 40, 40), (60, 160, 50), (230, 220, 60), (110, 40, 120)]


def picture(path: Path, colour, rng: np.random.Generator) -> None:
    """A 48x40 JPEG of a class colour with noise and a bright square somewhere."""
    px = np.clip(np.array(colour) + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
    y, x = rng.integers(0, 24, 2)
    px[y:y + 12, x:x + 12] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px).save(path, quality=90)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    root, rng = tmp_path_factory.mktemp("pictures") / "fruit", np.random.default_rng(0)
    for name, colour in zip(CLASSES, COLOURS):
        for i in range(20):
            picture(root / name / f"{i:02d}.jpg", colour, rng)
    (root / ".DS_Store").write_bytes(b"\0junk")
    (root / "notes.txt").write_text("where these came from")
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory, _params_raw, train_archive, pictures) -> Path:
    root = make_repo(tmp_path_factory.mktemp("repo"), _params_raw, train_archive)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["data"].update(source="folder", path=str(pictures), val_size=8, test_size=0.2)
    raw["model"].update(image_size=64, patch_size=8)
    raw["train"].update(batch_size=8, epochs=2, snapshot_images=4)
    raw["faithfulness"].update(images=8, show_images=2)
    raw["report"].update(images=8, class_images=16)
    raw["visualize"].update(num_images=4, distance_images=8)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sh(root, "git", "commit", "-qam", "my own pictures")
    return root


def test_repro_trains_on_the_folder_at_64_pixels_with_its_class_names(repo, pictures):
    out = dvc(repo, "repro")
    assert stages_run(out) == STAGES
    summary = json.loads((repo / "data/dataset.json").read_text())
    assert (summary["name"], summary["image_size"], summary["classes"]) == ("fruit", 64, 4)
    assert (summary["train"], summary["test"]) == (64, 16)
    assert summary["source"] == str(pictures.resolve())
    rec = torch.load(repo / "models/model.pt", weights_only=True)
    assert rec["classes"] == CLASSES and rec["model_config"]["image_size"] == 64
    assert rec["snapshots"]["rollout"].shape[-2:] == (8, 8)  # the 64/8 patch grid
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert set(metrics["per_class_accuracy"]) == set(CLASSES)
    page = (repo / "reports/explorer/index.html").read_text()
    assert all(f'"{c}"' in page for c in CLASSES)
    assert json.loads(dvc(repo, "status", "--json")) == {}
    # predict reads the picture at the model's 64 pixels and answers in the folder's names
    (answer,), errors = run_predict(FileModel(repo / "models/model.pt", torch.device("cpu")),
                                    [pictures / "lemon" / "00.jpg"], top_k=4, out=repo / "overlays")
    assert errors == [] and sorted(c for c, _ in answer.top) == CLASSES
    assert len(list((repo / "overlays").glob("*.png"))) == 1
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "trained on my own pictures")


@pytest.mark.parametrize("edit", ["add", "change", "delete"])
def test_one_picture_changed_added_or_deleted_reruns_the_first_stage(repo, pictures, edit):
    target = pictures / "kiwi" / ("99.jpg" if edit == "add" else "03.jpg")
    before = target.read_bytes() if target.exists() else None
    if edit == "delete":
        target.unlink()
    else:
        picture(target, (250, 250, 250), np.random.default_rng(1))
    try:
        stale = set(json.loads(dvc(repo, "status", "--json")))
        assert stale == {"download"}, stale  # what it writes feeds every other stage
    finally:
        if before is None:
            target.unlink()
        else:
            target.write_bytes(before)
    assert json.loads(dvc(repo, "status", "--json")) == {}  # the folder as it was: nothing
