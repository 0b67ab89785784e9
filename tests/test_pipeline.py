"""End to end, as users drive it: dvc repro, dvc exp run -S, --temp, --queue, MLflow store.

One temporary git repository holds a copy of the project (tiny params, a synthetic archive);
the tests run in file order and build on each other's experiments. Each runs the fewest
stages that show its behaviour: an experiment that needs a test metric and a figure logged
by a later stage targets the evaluate stage (`dvc exp run ... evaluate`), not the pipeline.
"""
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT, registered_uri, shrink, write_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
PROJECT_FILES = ("dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore", "src")
DVC_STAGES = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
STAGES = list(DVC_STAGES)  # in file order, which is the order they run in
PIPELINE = ["download", "train", "evaluate", "visualize", "faithfulness"]  # then maybe more
# The stages that read the visualize stage's figures, so rerun when only those change.
AFTER_FIGURES = [name for name, stage in DVC_STAGES.items()
                 if any(d.rstrip("/") == "reports/figures" or d.startswith("reports/figures/")
                        for d in stage.get("deps", []))]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_")) and k != "VIRTUAL_ENV"}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", MLFLOW_DISABLE_TELEMETRY="true",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", **extra)
    return env


def sh(cwd: Path, *cmd: str, timeout: int = 300, **env: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=clean_env(**env), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


def dvc(cwd: Path, *args: str, timeout: int = 300) -> str:
    return sh(cwd, str(BIN / "dvc"), *args, timeout=timeout)


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, _params_raw, train_archive) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for name in PROJECT_FILES:
        src, dst = PROJECT_ROOT / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, dst)
    raw = shrink(copy.deepcopy(_params_raw), train_archive)
    raw["train"]["epochs"] = 1
    raw["tracking"]["experiment"] = "vitlens"
    # Exporting and registering the model costs seconds per training: only the queued pair,
    # two trainings into one store at once, does it (the model itself: test_predict, test_serve).
    raw["tracking"]["log_model"] = False
    write_params(root / "params.yaml", raw)
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.name", "vitlens tests")  # DVC commits experiments
    sh(root, "git", "config", "user.email", "tests@vitlens.invalid")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "project")
    return root


def client(repo: Path):
    from mlflow.tracking import MlflowClient
    return MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")


def runs_by_exp_name(repo: Path) -> dict:
    c = client(repo)
    exp = c.get_experiment_by_name("vitlens")
    return {r.data.tags.get("dvc_exp_name"): r for r in c.search_runs([exp.experiment_id])}


def test_repro_runs_every_stage_then_nothing(repo):
    assert STAGES[:len(PIPELINE)] == PIPELINE
    out = dvc(repo, "repro")
    assert stages_run(out) == STAGES
    assert (repo / "dvc.lock").is_file()
    assert json.loads((repo / "reports/metrics.json").read_text())["accuracy"] > 0.2
    assert stages_run(dvc(repo, "repro")) == []
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline run")


@pytest.mark.parametrize("module,stages", [("figures", {"evaluate", "visualize"}),
                                           ("faithfulness", {"faithfulness"})])
def test_editing_a_figure_module_stales_the_figure_stages_not_training(repo, module, stages):
    plots = repo / "src/vitlens/plots" / f"{module}.py"
    original = plots.read_text()
    plots.write_text(original + "\n# an edit\n")
    try:
        stale = set(json.loads(dvc(repo, "status", "--json")))
    finally:
        plots.write_text(original)
    assert stages <= stale and not stale & set(PIPELINE) - stages, stale
    assert json.loads(dvc(repo, "status", "--json")) == {}


def experiments(repo: Path) -> dict:
    show = json.loads(dvc(repo, "exp", "show", "--json"))
    return {r["name"]: r["data"] for c in show for e in (c.get("experiments") or [])
            for r in e["revs"]}


def back_to_the_baseline(repo: Path) -> None:
    sh(repo, "git", "checkout", "--", ".")
    dvc(repo, "checkout")
    assert json.loads(dvc(repo, "status", "--json")) == {}


def test_exp_run_records_metrics_and_reruns_only_what_changed(repo):
    """A train param reruns training and what reads the model (evaluate here, the rest left
    stale), never the download; a visualize param reruns the figures alone."""
    out = dvc(repo, "exp", "run", "-S", "train.epochs=2", "evaluate")
    assert stages_run(out) == ["train", "evaluate"]
    name = re.search(r"Ran experiment\(s\): (\S+)", out).group(1)
    data = experiments(repo)[name]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 2
    assert 0 < data["metrics"]["reports/metrics.json"]["data"]["accuracy"] <= 1
    stale = set(json.loads(dvc(repo, "status", "--json")))
    assert stale == set(STAGES) - {"download", "train", "evaluate"}  # all read the new model
    back_to_the_baseline(repo)

    out = dvc(repo, "exp", "run", "-S", "visualize.seed=1")
    assert stages_run(out) == ["visualize", *AFTER_FIGURES]
    name = re.search(r"Ran experiment\(s\): (\S+)", out).group(1)
    assert experiments(repo)[name]["params"]["params.yaml"]["data"]["visualize"]["seed"] == 1
    back_to_the_baseline(repo)


def test_temp_and_queued_experiments_land_in_the_project_store(repo):
    # The evaluate stage (and the training it reads): a test metric, and a figure logged from
    # a process other than the training's, into the training's run.
    temp = dvc(repo, "exp", "run", "--temp", "-S", "train.seed=5", "evaluate")
    assert stages_run(temp) == ["train", "evaluate"]
    names = re.findall(r"Ran experiment\(s\): (\S+)", temp)
    for seed in (6, 7):
        queued = dvc(repo, "exp", "run", "--queue", "-S", f"train.seed={seed}",
                     "-S", "tracking.log_model=true", "evaluate")
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
    for name in names[1:]:  # the queued pair registered its models, neither lost
        registered_uri(runs[name].info.run_id, c)


def test_a_run_is_reproduced_from_its_mlflow_tags(repo, tmp_path):
    run = next(r for r in runs_by_exp_name(repo).values() if r.data.params["train.seed"] == "6")
    rev = run.data.tags["dvc_exp_baseline_rev"]
    copy_dir = tmp_path / "reproduction"
    sh(repo, "git", "worktree", "add", "-q", str(copy_dir), rev)
    sh(copy_dir, sys.executable, "-m", "vitlens.cli.reproduce", run.info.run_id,
       "--out", "params.yaml", MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}")
    # The reproduction itself logs to a store of its own, in its own directory. The metrics
    # compared need the evaluate stage and what it reads, no more.
    assert stages_run(dvc(copy_dir, "repro", "evaluate")) == ["download", "train", "evaluate"]
    metrics = json.loads((copy_dir / "reports/metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(run.data.metrics["test/accuracy"], abs=1e-6)
    assert metrics["loss"] == pytest.approx(run.data.metrics["test/loss"], rel=1e-5)
