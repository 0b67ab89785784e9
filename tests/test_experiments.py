"""Experiments DVC runs outside the workspace, as users start them: `dvc exp run --temp`, and
`--queue` with two workers at once into one SQLite store; then a run reproduced from its
MLflow tags. One temporary git repository of the project (tiny params, a synthetic archive);
the tests run in file order, the last reproduces a run of the one before.
"""
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import copy_store, registered_uri, run_cli
from dvcrepo import BIN, clean_env, client, dvc, make_repo, runs_by_exp_name, sh, stages_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory, _params_raw, train_archive, migrated_db) -> Path:
    """The project, its store already migrated (test_pipeline.py starts from none)."""
    root = make_repo(tmp_path_factory.mktemp("exprepo"), _params_raw, train_archive)
    copy_store(migrated_db, root)
    return root


def test_temp_and_queued_experiments_land_in_the_project_store(repo):
    # The evaluate stage (and the training it reads): a test metric, and a figure logged from
    # a process other than the training's, into the training's run.
    temp = dvc(repo, "exp", "run", "--temp", "-S", "train.seed=5", "evaluate")
    assert stages_run(temp) == ["download", "train", "evaluate"]  # nothing ran here before
    names = re.findall(r"Ran experiment\(s\): (\S+)", temp)
    for seed in (6, 7):
        queued = dvc(repo, "exp", "run", "--queue", "-S", f"train.seed={seed}",
                     "-S", "tracking.log_model=true", "publish", "evaluate")
        names += re.findall(r"Queued experiment '(\S+)'", queued)
    assert len(names) == 3
    # Two at once: SQLite locking must not lose a run. The workers inherit `queue start`'s
    # stdout and stderr and keep them open until they finish: a file, not a pipe to wait on.
    log = repo.parent / "queue-start.log"
    with open(log, "w") as out:
        r = subprocess.run([str(BIN / "dvc"), "queue", "start", "-j", "2"], cwd=repo,
                           env=clean_env(), stdout=out, stderr=subprocess.STDOUT, timeout=120)
    assert r.returncode == 0 and "Started '2' new" in log.read_text(), log.read_text()
    deadline = time.monotonic() + 600  # two trainings at once on a shared CPU
    while re.search(r"Queued|Running", dvc(repo, "queue", "status")):
        assert time.monotonic() < deadline, dvc(repo, "queue", "status")
        time.sleep(3)
    assert dvc(repo, "queue", "status").count("Success") == 2
    assert not list((repo / ".dvc/tmp/exps").glob("tmp*"))  # DVC removed its temp copies

    runs, c = runs_by_exp_name(repo), client(repo)
    baseline = sh(repo, "git", "rev-parse", "HEAD").strip()
    for name, seed in zip(names, (5, 6, 7)):
        run = runs[name]
        assert run.info.status == "FINISHED"
        assert run.data.params["train.seed"] == str(seed)
        assert run.data.tags["dvc_exp_baseline_rev"] == baseline
        assert [m.step for m in c.get_metric_history(run.info.run_id, "val/accuracy")] == [1]
        assert "test/accuracy" in run.data.metrics
        figures = {a.path for a in c.list_artifacts(run.info.run_id, "figures")}
        assert "figures/confusion.png" in figures
        local = c.download_artifacts(run.info.run_id, "figures/confusion.png",
                                     str(repo.parent / f"dl-{name}"))
        assert Path(local).read_bytes().startswith(b"\x89PNG")
        assert run.info.artifact_uri.startswith((repo / "mlartifacts").as_uri())
    for name in names[1:]:  # the queued pair's publish stages registered their models, neither lost
        registered_uri(runs[name].info.run_id, c)


def test_a_run_is_reproduced_from_its_mlflow_tags(repo, tmp_path, monkeypatch, capsys, cifar_npz,
                                                 mlflow_store):
    """`vitlens reproduce` writes the run's params into a checkout of its commit; training and
    evaluating with them gives the run's test metrics. In this process: the stages' commands
    and `dvc repro` in a checkout are shown above and in test_pipeline.py."""
    from vitlens.cli import reproduce
    from vitlens.config import load_params
    from vitlens.pipeline.evaluate import run_evaluation
    from vitlens.pipeline.train import run_training
    run = next(r for r in runs_by_exp_name(repo).values() if r.data.params["train.seed"] == "6")
    rev = run.data.tags["dvc_exp_baseline_rev"]
    copy_dir = tmp_path / "reproduction"
    sh(repo, "git", "worktree", "add", "-q", str(copy_dir), rev)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    code, _, err = run_cli(monkeypatch, capsys, reproduce.main, run.info.run_id,
                           "--out", copy_dir / "params.yaml")
    assert code == 0, err
    # The reproduction logs to a store of its own.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_store / 'mlflow.db'}")
    params = load_params(copy_dir / "params.yaml")
    assert params.train.seed == 6
    model = copy_dir / "models/model.pt"
    run_training(params, cifar_npz, model, copy_dir / "history.csv", copy_dir / "ckpt.pt")
    run_evaluation(str(copy_dir / "params.yaml"), model, cifar_npz, copy_dir / "eval",
                   copy_dir / "metrics.json")
    metrics = json.loads((copy_dir / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(run.data.metrics["test/accuracy"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(run.data.metrics["test/loss"], rel=1e-5)
