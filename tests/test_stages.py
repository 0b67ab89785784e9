"""The evaluate and visualize stages on a tiny trained model and a synthetic archive."""
import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from vitlens.pipeline.evaluate import run_evaluation
from vitlens.pipeline.visualize import run_visualize, select_examples

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


@pytest.mark.parametrize("stage", ["evaluate", "visualize"])
@pytest.mark.parametrize("content,phrase", [
    (None, "not found: run the train stage first"),
    (b"garbage", "is not a readable model file"),
])
def test_bad_model_file_is_one_line_error(project, cifar_npz, tmp_path, stage, content, phrase):
    model = tmp_path / "model.pt"
    if content is not None:
        model.write_bytes(content)
    r = subprocess.run([sys.executable, "-m", f"vitlens.stages.{stage}", "--params",
                        str(project / "params.yaml"), "--model", str(model), "--data",
                        str(cifar_npz), "--out-dir", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip().splitlines()[-1]]
    assert phrase in r.stderr and r.stderr.startswith("error:")
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
    assert set(stages) == {"download", "train", "evaluate", "visualize", "faithfulness"}
    for name, stage in stages.items():
        module = f"vitlens.stages.{name}"
        prefix, sep, _ = stage["cmd"].partition(f"python -m {module} ")
        assert sep, f"stage {name} does not run python -m {module}"
        r = subprocess.run(f"{prefix}python -c 'import {module} as m; print(m.__file__)'",
                           shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert Path(r.stdout.strip()) == tmp_path / "src/vitlens/stages" / f"{name}.py"
