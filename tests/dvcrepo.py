"""A DVC project in a temporary git repository, and the commands the end-to-end tests drive
it with (test_pipeline.py, test_experiments.py)."""
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import PROJECT_ROOT, shrink, write_params

BIN = Path(sys.executable).parent
PROJECT_FILES = ("dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore", "src", "data/pictures")
DVC_STAGES = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
STAGES = list(DVC_STAGES)  # in file order, which is the order they run in
PIPELINE = ["download", "train", "publish", "evaluate", "visualize", "faithfulness"]  # then maybe more
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


def make_repo(root: Path, params_raw: dict, train_archive) -> Path:
    """A git repository at `root` holding a copy of the project with tiny params (one epoch,
    no model logging), committed."""
    for name in PROJECT_FILES:
        src, dst = PROJECT_ROOT / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, dst)
    raw = shrink(copy.deepcopy(params_raw), train_archive)
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


def experiments(repo: Path) -> dict:
    show = json.loads(dvc(repo, "exp", "show", "--json"))
    return {r["name"]: r["data"] for c in show for e in (c.get("experiments") or [])
            for r in e["revs"]}


def back_to_the_baseline(repo: Path) -> None:
    sh(repo, "git", "checkout", "--", ".")
    dvc(repo, "checkout")
    assert json.loads(dvc(repo, "status", "--json")) == {}
