"""`vitlens compare A B` from the command line: every kind of model reference (a model file,
an MLflow run by id, runs:/ and models:/ URI, a DVC experiment name and a git revision), and
the one-line errors that write nothing (a missing file, a wrong name, an unreadable file,
classes that differ, a run without the model file)."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT, registered_uri, run_cli
from dvcrepo import clean_env
from vitlens.cli import compare, refs
from vitlens.model.trained import load_trained


def page_doc(path: Path) -> dict:
    m = re.search(r'<script type="application/json" id="vitlens-data">(.*?)</script>', path.read_text(), re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def cli(monkeypatch, capsys, project, cifar_npz, out, *models):
    return run_cli(monkeypatch, capsys, compare.main, *models, "--out", out,
                   "--params", project / "params.yaml", "--data", cifar_npz)


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and all(w in err for w in words), err


def test_two_model_files_make_one_page_logged_to_the_run(project, cifar_npz, tmp_path, monkeypatch, capsys,
                                                         mlflow_store):
    from mlflow.tracking import MlflowClient

    model = project / "models/model.pt"
    code, out, err = cli(monkeypatch, capsys, project, cifar_npz, tmp_path / "cmp", model, model)
    assert code == 0, err
    assert "wrote" in out and "rank correlation of the rollouts 1.000" in out
    doc = page_doc(tmp_path / "cmp" / "index.html")
    assert doc["meta"]["kind"] == "compare" and doc["meta"]["params_diff"] == []
    assert len(doc["agreement"]["spearman"]) == 12 and doc["summary"]["spearman"] == pytest.approx(1)
    run_id = load_trained(model, "cpu").run_id
    assert [a.path for a in MlflowClient().list_artifacts(run_id, "compare")] == ["compare/index.html"]


def test_mlflow_runs_by_id_runs_uri_and_registered_model(project, cifar_npz, tmp_path, monkeypatch, capsys,
                                                         mlflow_store):
    run_id = load_trained(project / "models/model.pt", "cpu").run_id
    got = refs.resolve(run_id, tmp_path / "a")
    assert got.path.is_file() and load_trained(got.path, "cpu").run_id == run_id
    for name in (f"runs:/{run_id}", registered_uri(run_id, name="vitlens-cifar10")):
        assert refs.resolve(name, tmp_path / name.replace(":", "").replace("/", "_")).path.is_file()
    code, out, err = cli(monkeypatch, capsys, project, cifar_npz, tmp_path / "cmp", run_id, f"runs:/{run_id}")
    assert code == 0, err
    assert (tmp_path / "cmp" / "index.html").is_file()


def test_a_dvc_experiment_and_a_git_revision(project, tmp_path, monkeypatch):
    """models/model.pt read from the DVC cache at a revision, its committed reports with it."""
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    (repo / "reports").mkdir()

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=repo, env=clean_env(), check=True, capture_output=True, timeout=120)
    model = (project / "models/model.pt").read_bytes()
    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    (repo / "models/model.pt").write_bytes(model)
    (repo / "reports/metrics.json").write_text('{"accuracy": 0.25}')
    sh("dvc", "add", "-q", "models/model.pt")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "one")
    sh("git", "tag", "v1")
    rec = torch.load(repo / "models/model.pt", weights_only=True)
    rec["params"]["train"]["epochs"] = 99
    torch.save(rec, repo / "models/model.pt")
    (repo / "reports/metrics.json").write_text('{"accuracy": 0.5}')
    sh("dvc", "add", "-q", "models/model.pt")
    sh("dvc", "exp", "save", "-q", "-n", "longer", "-I", "reports/metrics.json")
    monkeypatch.chdir(repo)
    tagged, exp = refs.resolve("v1", tmp_path / "a"), refs.resolve("longer", tmp_path / "b")
    assert tagged.path.read_bytes() == model and tagged.reports["metrics"] == {"accuracy": 0.25}
    assert load_trained(exp.path, "cpu").params["train"]["epochs"] == 99
    assert exp.reports["metrics"] == {"accuracy": 0.5} and exp.reports["faithfulness"] is None


def test_missing_wrong_and_unreadable_models_are_one_line_and_write_nothing(
        project, cifar_npz, tmp_path, monkeypatch, capsys, mlflow_store):
    from vitlens.tracking import runs

    model, out = project / "models/model.pt", tmp_path / "cmp"
    monkeypatch.chdir(tmp_path)  # no git repository here: a name is no revision
    code, _, err = cli(monkeypatch, capsys, project, cifar_npz, out, model, tmp_path / "nope" / "model.pt")
    one_line_error(code, err, "nope/model.pt not found")
    code, _, err = cli(monkeypatch, capsys, project, cifar_npz, out, "no-such-experiment", model)
    one_line_error(code, err, "no-such-experiment: no model file, MLflow run, DVC experiment or git revision")
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    code, _, err = cli(monkeypatch, capsys, project, cifar_npz, out, model, tmp_path / "bad.pt")
    one_line_error(code, err, "bad.pt is not a readable model file")
    code, _, err = cli(monkeypatch, capsys, project, cifar_npz, out, model, "0" * 32)
    one_line_error(code, err, "MLflow run " + "0" * 32)
    code, _, err = cli(monkeypatch, capsys, project, cifar_npz, out, model, "models:/no-such-model/1")
    one_line_error(code, err, "models:/no-such-model/1: no such registered model")
    bare = runs.create_run("tests", "bare", {})
    bare.finish("FINISHED")
    code, _, err = cli(monkeypatch, capsys, project, cifar_npz, out, model, bare.id)
    one_line_error(code, err, f"run {bare.id} has no models/model.pt artifact")
    assert not out.exists()


def test_models_of_other_classes_are_one_line_and_write_nothing(project, cifar_npz, tmp_path, monkeypatch,
                                                                capsys):
    rec = torch.load(project / "models/model.pt", weights_only=True)
    rec["classes"] = [f"flower{i}" for i in range(len(rec["classes"]))]
    torch.save(rec, tmp_path / "flowers.pt")
    out = tmp_path / "cmp"
    code, _, err = cli(monkeypatch, capsys, project, cifar_npz, out, project / "models/model.pt",
                       tmp_path / "flowers.pt")
    one_line_error(code, err, "does not share the dataset's classes", "flower0")
    assert not out.exists()


def test_the_size_and_speed_check_runs_both_commands_and_opens_the_page(project, cifar_npz, tmp_path,
                                                                         monkeypatch):
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from benchmarks import compare_check
    from conftest import CHROMIUM

    if not Path(CHROMIUM).is_file():
        pytest.skip("no Chromium")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PROJECT_ROOT / "src"), str(PROJECT_ROOT)]))
    model = str(project / "models/model.pt")
    r = compare_check.check(model, model, params=project / "params.yaml", data=cifar_npz, out=tmp_path / "cmp",
                            rounds=1, opens=1)
    assert r["bytes"] == (tmp_path / "cmp" / "index.html").stat().st_size < compare_check.BUDGET["bytes"]
    assert len(r["open_ms"]) == 1 and 0 < r["open_ms"][0] < compare_check.BUDGET["open_ms"]
    assert r["report_s"] > r["report_work_s"] > 0 and r["build_s"] > r["build_work_s"] > 0
    assert set(r["over_budget"]) <= {"build_over_report"}  # tiny models: the imports dominate either way
