"""End to end, as users drive it: dvc repro, a figure module's edit, dvc exp run -S.

One temporary git repository holds a copy of the project (tiny params, a synthetic archive);
the tests run in file order and build on each other's experiments. Each runs the fewest
stages that show its behaviour. Temporary and queued experiments: test_experiments.py.
"""
import json
import re
from pathlib import Path

import pytest

from dvcrepo import (
    AFTER_FIGURES,
    PIPELINE,
    STAGES,
    back_to_the_baseline,
    dvc,
    experiments,
    make_repo,
    sh,
    stages_run,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory, _params_raw, train_archive) -> Path:
    return make_repo(tmp_path_factory.mktemp("repo"), _params_raw, train_archive)


def test_repro_runs_every_stage_then_nothing(repo):
    assert STAGES[:len(PIPELINE)] == PIPELINE
    out = dvc(repo, "repro")
    assert stages_run(out) == STAGES
    assert (repo / "dvc.lock").is_file()
    assert json.loads((repo / "reports/metrics.json").read_text())["accuracy"] > 0.2
    assert stages_run(dvc(repo, "repro")) == []
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline run")


def stale_after_an_edit(repo: Path, path: str) -> set[str]:
    """The stages `dvc status` lists while `path` carries a one-line edit (then undone)."""
    edited = repo / path
    original = edited.read_text()
    edited.write_text(original + "\n# an edit\n")
    try:
        return set(json.loads(dvc(repo, "status", "--json")))
    finally:
        edited.write_text(original)


@pytest.mark.parametrize("module,stages", [("figures", {"visualize"}), ("confusion", {"evaluate"}),
                                           ("faithfulness", {"faithfulness"})])
def test_editing_a_figure_module_stales_the_figure_stages_not_training(repo, module, stages):
    stale = stale_after_an_edit(repo, f"src/vitlens/plots/{module}.py")
    assert stages <= stale and not stale & set(PIPELINE) - stages, stale
    assert json.loads(dvc(repo, "status", "--json")) == {}


@pytest.mark.parametrize("path", ["src/vitlens/plots/common.py", "src/vitlens/model/pixels.py",
                                  "src/vitlens/tracking/registry.py", "src/vitlens/report/page.py",
                                  "src/vitlens/cli/predict.py"])
def test_drawing_serving_and_registry_edits_never_stale_training(repo, path):
    """What `dvc status` lists after such an edit: the stages that draw, serve or register,
    never train (the edits would throw a finished training away)."""
    stale = stale_after_an_edit(repo, path)
    assert "train" not in stale and "download" not in stale, stale
    if path.endswith(("pixels.py", "registry.py", "common.py")):
        assert "publish" in stale, stale


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

    out = dvc(repo, "exp", "run", "-S", "visualize.seed=1", "visualize")
    assert stages_run(out) == ["visualize"]
    name = re.search(r"Ran experiment\(s\): (\S+)", out).group(1)
    assert experiments(repo)[name]["params"]["params.yaml"]["data"]["visualize"]["seed"] == 1
    assert set(json.loads(dvc(repo, "status", "--json"))) == set(AFTER_FIGURES)  # and no more
    back_to_the_baseline(repo)
