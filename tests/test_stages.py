"""The evaluate and visualize stages on a tiny trained model and a synthetic archive."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from conftest import run_cli, write_params
from vitlens.pipeline import visualize
from vitlens.pipeline.evaluate import run_evaluation
from vitlens.pipeline.visualize import run_visualize, select_examples
from vitlens.stages import evaluate as evaluate_stage
from vitlens.stages import visualize as visualize_stage

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("training_curves.png", "input_grid.png", "attention_overlays.png",
           "rollout_vs_heads.png", "attention_distance.png")


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG), path
    assert 5_000 < len(data) < 3_000_000, (path, len(data))


def run_id_of(project):
    import torch
    return torch.load(project / "models/model.pt", weights_only=True)["mlflow_run_id"]


def test_evaluate_writes_metrics_plots_and_logs_to_the_run(project, cifar_npz):
    metrics = run_evaluation(str(project / "params.yaml"), project / "models/model.pt",
                             cifar_npz, project / "reports/eval", project / "reports/metrics.json")
    saved = json.loads((project / "reports/metrics.json").read_text())
    assert saved == metrics
    assert set(saved) == {"accuracy", "loss", "num_images", "per_class_accuracy"}
    assert saved["num_images"] == 100 and 0.2 < saved["accuracy"] <= 1.0
    assert 0 < saved["loss"] < 5 and len(saved["per_class_accuracy"]) == 10
    rows = (project / "reports/eval/confusion.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) == 101
    hits = sum(a == p for a, p in (r.split(",") for r in rows[1:]))
    assert hits == round(saved["accuracy"] * 100)
    assert_png(project / "reports/eval/confusion.png")
    assert (project / "reports/eval/per_class.csv").read_text().startswith("class,accuracy,support")

    client = MlflowClient()
    run = client.get_run(run_id_of(project))
    assert run.data.metrics["test/accuracy"] == pytest.approx(saved["accuracy"])
    assert "test/accuracy/airplane" in run.data.metrics
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert "figures/confusion.png" in figures


def check_top_confusions(out) -> list[dict]:
    """out/top_confusions.csv against out/confusion.csv: the most frequent mistakes (at most
    20), most frequent first, each with its count and its share of the true class."""
    import csv
    from collections import Counter

    with open(out / "confusion.csv") as f:
        pairs = [(r["actual"], r["predicted"]) for r in csv.DictReader(f)]
    support = Counter(a for a, _ in pairs)
    mistakes = Counter(p for p in pairs if p[0] != p[1])
    with open(out / "top_confusions.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["true", "predicted", "count", "share"]
    assert len(rows) == min(20, len(mistakes))
    counts = [int(r["count"]) for r in rows]
    assert counts == sorted(counts, reverse=True)
    assert counts[:1] == sorted(mistakes.values(), reverse=True)[:1]
    for r in rows:
        assert int(r["count"]) == mistakes[r["true"], r["predicted"]] > 0
        assert float(r["share"]) == pytest.approx(int(r["count"]) / support[r["true"]], abs=1e-4)
    return rows


def test_evaluate_writes_and_logs_the_top_confusions(project, cifar_npz):
    run_evaluation(str(project / "params.yaml"), project / "models/model.pt", cifar_npz,
                   project / "reports/eval", project / "reports/metrics.json")
    check_top_confusions(project / "reports/eval")  # the header alone when nothing is confused
    logged = {a.path for a in MlflowClient().list_artifacts(run_id_of(project), "evaluation")}
    assert {"evaluation/per_class.csv", "evaluation/top_confusions.csv"} <= logged


def many_classes(root, params_raw, names, size):
    """A test set of len(names) classes of `size`-pixel pictures (four of each) and an untrained
    model file for it, as the download and train stages write them; tracking off."""
    from vitlens.config import parse_params
    from vitlens.data.imageset import ImageSet, save_arrays
    from vitlens.model.record import model_record
    from vitlens.model.vit import build_model

    raw = copy.deepcopy(params_raw)
    raw["data"].update(source="folder", path="pictures")
    raw["model"].update(image_size=size, patch_size=size // 8, dim=32, depth=2, heads=2, mlp_ratio=2.0)
    raw["tracking"]["enabled"] = False
    params = parse_params(raw)
    rng = np.random.default_rng(0)
    y = np.arange(4 * len(names)) % len(names)
    x = rng.integers(0, 256, (len(y), 3, size, size), dtype=np.uint8)
    save_arrays(ImageSet(x, y, x.copy(), y.copy(), list(names), name="mine"), root / "data.npz")
    torch.manual_seed(0)
    record = model_record(build_model(params.model, len(names)), params, list(names), mean=[0.5] * 3,
                          std=[0.25] * 3, history=[], git_commit="", run_id=None)
    torch.save(record, root / "model.pt")
    return write_params(root / "params.yaml", raw)


@pytest.mark.parametrize("k,size", [(100, 64), (5, 96)])
def test_evaluate_reads_the_classes_and_the_picture_size_from_the_data(project, tmp_path, k, size):
    names = [f"kind_{i:03d}" for i in range(k)] if k > 5 else ["rose", "tulip", "daisy", "iris", "lily"]
    params = many_classes(tmp_path, yaml.safe_load((project / "params.yaml").read_text()), names, size)
    out = tmp_path / "eval"
    metrics = run_evaluation(params, tmp_path / "model.pt", tmp_path / "data.npz", out, tmp_path / "m.json")
    assert list(metrics["per_class_accuracy"]) == names and metrics["num_images"] == 4 * k
    per_class = (out / "per_class.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in per_class[1:]] == names
    assert {r.split(",")[2] for r in per_class[1:]} == {"4"}
    top = check_top_confusions(out)
    assert top and all(r["true"] in names and r["predicted"] in names for r in top)
    assert_png(out / "confusion.png")


@pytest.mark.parametrize("k,size,says", [
    (100, 32, "was trained on 100 other classes than the 10 of {data}"),
    (10, 64, "was trained on 64px pictures, {data} holds 32px ones")])
def test_evaluate_refuses_a_model_of_other_data(project, cifar_npz, tmp_path, monkeypatch, capsys,
                                                k, size, says):
    """A model of other classes, or of pictures of another size, is one line, not a wrong
    score or a traceback."""
    from conftest import CLASSES

    names = list(CLASSES) if k == 10 else [f"kind_{i:03d}" for i in range(k)]
    params = many_classes(tmp_path, yaml.safe_load((project / "params.yaml").read_text()), names, size)
    code, out, err = run_cli(monkeypatch, capsys, evaluate_stage.main, "--params", params,
                             "--model", tmp_path / "model.pt", "--data", cifar_npz,
                             "--out-dir", tmp_path / "out", "--metrics", tmp_path / "m.json")
    assert code == 1 and out == ""
    assert err == (f"error: {tmp_path / 'model.pt'} {says.format(data=cifar_npz)}: rerun the train "
                   "stage (dvc repro train)\n")
    assert not (tmp_path / "out").exists()


def test_flip_tta_is_reported_beside_the_plain_numbers(project, cifar_npz, tmp_path):
    """evaluate.flip_tta adds the metrics of logits averaged with the mirrored image; the
    plain ones stay exactly what they are without it."""
    from vitlens.data.imageset import load_arrays
    from vitlens.data.split import to_device
    from vitlens.model.trained import load_trained
    from vitlens.train.evaluation import split_logits
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["evaluate"]["flip_tta"] = True
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    plain = run_evaluation(str(project / "params.yaml"), project / "models/model.pt", cifar_npz,
                           tmp_path / "plain", tmp_path / "plain.json")
    both = run_evaluation(str(params), project / "models/model.pt", cifar_npz, tmp_path / "tta",
                          tmp_path / "tta.json")
    assert "accuracy_flip_tta" not in plain
    assert set(both) == set(plain) | {"accuracy_flip_tta", "loss_flip_tta"}
    assert {k: both[k] for k in plain} == plain
    t = load_trained(project / "models/model.pt", "cpu")
    data = load_arrays(cifar_npz)
    test = to_device(data.x_test, data.y_test, t.device)
    x = t.norm(test.x)
    with torch.no_grad():
        mean = (t.vit(x) + t.vit(x.flip(-1))) / 2
    got = split_logits(t.vit, test, t.norm, 7, t.device, bf16=False, flip=True)  # batches of 7: order kept
    assert torch.allclose(got, mean, atol=1e-5)
    assert not torch.allclose(got, split_logits(t.vit, test, t.norm, 7, t.device, bf16=False), atol=1e-3)
    assert both["accuracy_flip_tta"] == pytest.approx(
        (mean.argmax(1) == test.y).float().mean().item())
    run = MlflowClient().get_run(run_id_of(project))
    assert run.data.metrics["test/accuracy_flip_tta"] == pytest.approx(both["accuracy_flip_tta"])


def test_visualize_writes_every_figure_and_logs_them(project, cifar_npz):
    out = project / "reports/figures"
    run_visualize(str(project / "params.yaml"), project / "models/model.pt", cifar_npz, out)
    for name in FIGURES:
        assert_png(out / name)
    dist = json.loads((out / "attention_distance.json").read_text())
    assert dist["images"] == 48 and len(dist["per_head"]) == 2 * 2
    assert all(0 <= r["distance_px"] <= 28 * 2**0.5 for r in dist["per_head"])
    logged = {a.path for a in MlflowClient().list_artifacts(run_id_of(project), "figures")}
    assert {f"figures/{n}" for n in FIGURES} <= logged


def test_selection_mixes_right_and_wrong():
    import numpy as np
    cand = np.arange(10, 20)
    truth = np.zeros(10, int)
    pred = np.array([0, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    chosen = select_examples(pred, truth, cand, 4)
    assert chosen.tolist() == [10, 12, 11, 13]
    assert select_examples(np.zeros(10, int), truth, cand, 4).tolist() == [10, 11, 12, 13]


def visualize_params(project, tmp_path, **cfg):
    """The project's params with visualize.* changed, tracking off (the project's run keeps
    its own figures), and few distance images (the maps are what these tests look at)."""
    raw = copy.deepcopy(yaml.safe_load((project / "params.yaml").read_text()))
    raw["visualize"].update({"distance_images": 4, **cfg})
    raw["tracking"]["enabled"] = False
    return write_params(tmp_path / "params.yaml", raw)


@pytest.fixture
def drawn(monkeypatch):
    """The arguments of every attention_overlays and rollout_vs_heads call, as the visualize
    stage makes them; the figures are still drawn."""
    calls = {}
    for name in ("attention_overlays", "rollout_vs_heads"):
        real = getattr(visualize.figures, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] = (args, kwargs)
            return _real(*args, **kwargs)
        monkeypatch.setattr(visualize.figures, name, spy)
    return calls


def test_the_figures_show_the_maps_of_the_images_shown(project, cifar_npz, tmp_path, drawn,
                                                       capsys):
    """visualize.indices are the images drawn, exactly and in order; each overlay is that
    image's own rollout, its gradient rollout beside it, the heads its last layer's."""
    from vitlens.data.imageset import load_arrays
    from vitlens.explain.attention import upsample_map
    from vitlens.explain.maps import compute_maps
    from vitlens.model.trained import load_trained

    indices = [7, 3, 12, 0]
    run_visualize(str(visualize_params(project, tmp_path, indices=indices)),
                  project / "models/model.pt", cifar_npz, tmp_path / "out")
    assert f"for test images {indices} to" in capsys.readouterr().out
    data, trained = load_arrays(cifar_npz), load_trained(project / "models/model.pt")
    x = data.x_test[indices]
    maps = compute_maps(trained.vit, trained.norm(torch.from_numpy(x)))
    rollout = upsample_map(maps.rollout, 32).numpy()
    grad = upsample_map(maps.by_name("grad_rollout"), 32).numpy()
    probs = torch.softmax(maps.logits, dim=1)
    assert not np.allclose(rollout, grad, atol=1e-4)  # else a swap would go unseen

    (images, truth, pred, conf, got_rollout), kw = drawn["attention_overlays"]
    assert np.array_equal(images, x)
    assert list(truth) == [trained.classes[y] for y in data.y_test[indices]]
    assert list(pred) == [trained.classes[i] for i in probs.argmax(1)]
    assert np.allclose(conf, probs.max(1).values.numpy(), atol=1e-6)
    assert got_rollout.shape == kw["grad_maps"].shape == (len(indices), 32, 32)
    assert np.allclose(got_rollout, rollout, atol=1e-6)
    assert np.allclose(kw["grad_maps"], grad, atol=1e-6)

    (images, heads_rollout, heads, titles), _ = drawn["rollout_vs_heads"]
    assert np.array_equal(images, x) and np.allclose(heads_rollout, rollout, atol=1e-6)
    assert np.allclose(heads, upsample_map(maps.heads, 32).numpy(), atol=1e-6)
    assert [t.split()[0] for t in titles] == [f"#{i}" for i in indices]


def test_out_of_range_indices_are_one_line_error(project, cifar_npz, tmp_path, monkeypatch,
                                                  capsys):
    params = visualize_params(project, tmp_path, indices=[5, 100, 99, 250])
    code, out, err = run_cli(monkeypatch, capsys, visualize_stage.main, "--params", params,
                             "--model", project / "models/model.pt", "--data", cifar_npz,
                             "--out-dir", tmp_path / "out")
    assert code == 1 and out == ""
    assert err == "error: visualize.indices=[100, 250] out of range 0-99\n"
    assert not (tmp_path / "out").exists()


STAGES = {"evaluate": evaluate_stage, "visualize": visualize_stage}


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("content,phrase", [
    (None, "not found: run the train stage first"),
    (b"garbage", "is not a readable model file"),
])
def test_bad_model_file_is_one_line_error(project, cifar_npz, tmp_path, monkeypatch, capsys,
                                          stage, content, phrase):
    """In this process (the command line itself: the test below)."""
    model = tmp_path / "model.pt"
    if content is not None:
        model.write_bytes(content)
    code, out, err = run_cli(monkeypatch, capsys, STAGES[stage].main, "--params",
                             project / "params.yaml", "--model", model, "--data", cifar_npz,
                             "--out-dir", tmp_path / "out")
    assert code == 1 and out == ""
    assert err.startswith("error:") and err.count("\n") == 1 and err.endswith("\n"), err
    assert phrase in err
    assert not (tmp_path / "out").exists()


def test_the_command_line_prints_one_line_error(project, cifar_npz, tmp_path):
    """As DVC runs a stage: `python -m`, a one-line error, no traceback, exit status 1."""
    model = tmp_path / "model.pt"
    model.write_bytes(b"garbage")
    r = subprocess.run([sys.executable, "-m", "vitlens.stages.visualize", "--params",
                        str(project / "params.yaml"), "--model", str(model), "--data",
                        str(cifar_npz), "--out-dir", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip().splitlines()[-1]]
    assert "is not a readable model file" in r.stderr and r.stderr.startswith("error:")
    assert not (tmp_path / "out").exists()


def test_stage_commands_import_the_code_beside_them(tmp_path):
    """`dvc exp run --temp/--queue` runs each stage in a copy of the repository; the stage
    must import that copy's src/, not the workspace's editable install, or a queued
    experiment would run whatever code the workspace holds when it starts."""
    import os
    import shutil
    from pathlib import Path

    import yaml

    from conftest import PROJECT_ROOT

    shutil.copytree(PROJECT_ROOT / "src", tmp_path / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"download", "train", "publish", "evaluate", "visualize", "faithfulness",
                           "report"}
    by_prefix: dict[str, list[str]] = {}  # one interpreter per distinct command prefix
    for name, stage in stages.items():
        module = f"vitlens.stages.{name}"
        prefix, sep, _ = stage["cmd"].partition(f"python -m {module} ")
        assert sep, f"stage {name} does not run python -m {module}"
        by_prefix.setdefault(prefix, []).append(name)
    for prefix, names in by_prefix.items():
        modules = ", ".join(f'"vitlens.stages.{n}"' for n in names)
        r = subprocess.run(f"{prefix}python -c 'import importlib\n"
                           f"for m in [{modules}]: print(importlib.import_module(m).__file__)'",
                           shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert [Path(f) for f in r.stdout.split()] == [
            tmp_path / "src/vitlens/stages" / f"{n}.py" for n in names]


def test_the_registered_name_follows_the_dataset():
    from vitlens.pipeline.publish import registered_model_name
    assert registered_model_name("vitlens-{data}", "cifar100") == "vitlens-cifar100"
    assert registered_model_name("mine", "flowers") == "mine"
