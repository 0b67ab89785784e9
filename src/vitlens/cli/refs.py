"""What `vitlens compare` accepts as a model, resolved to a local model file and its reports.

- A model file (the train stage's models/model.pt); its reports are read from the project it
  lies in (`<project>/reports/...` beside `<project>/models/`) where they exist.
- An MLflow run id, `runs:/<run_id>[/...]` or `models:/<name>/<version>` (or `@<alias>`): the
  run's `models/model.pt` artifact, which the publish stage logs, and the evaluate,
  faithfulness and visualize stages' JSON artifacts.
- A DVC experiment name or git revision of the repository here: `models/model.pt` at that
  revision, read from the DVC cache, and the reports committed with it.
Anything else, or a model that cannot be read, is one line (VitlensError).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in the one-line output

from vitlens.errors import VitlensError, first_line  # noqa: E402
from vitlens.tracking import runs  # noqa: E402

MODEL = "models/model.pt"  # the train stage's model, in a project, a revision and a run
# Each report: where the stages write it in a project, and where they log it in the run.
REPORTS = {"metrics": ("reports/metrics.json", "evaluation/metrics.json"),
           "faithfulness": ("reports/faithfulness.json", "faithfulness/faithfulness.json"),
           "distance": ("reports/figures/attention_distance.json", "figures/attention_distance.json")}
RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Ref:
    """A model named on the command line: the name as given, its file here, its reports
    (None where missing)."""

    name: str
    path: Path
    reports: dict[str, Any]


def parse_json(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None  # a damaged report: the page shows it as missing


def from_file(name: str, path: Path) -> Ref:
    project = path.resolve().parent.parent
    reports = {k: parse_json((project / local).read_text()) if (project / local).is_file() else None
               for k, (local, _) in REPORTS.items()}
    return Ref(name, path, reports)


def run_of(ref: str, client: Any) -> str:
    """The run id of a run id, runs:/ URI or models:/ URI."""
    if ref.startswith("runs:/"):
        return ref[len("runs:/"):].strip("/").split("/")[0]
    if ref.startswith("models:/"):
        name, _, version = ref[len("models:/"):].strip("/").partition("/")
        try:
            if "@" in name and not version:
                name, alias = name.split("@", 1)
                return str(client.get_model_version_by_alias(name, alias).run_id)
            return str(client.get_model_version(name, version).run_id)
        except Exception as e:  # noqa: BLE001 - MlflowException for a name or version the registry lacks
            raise VitlensError(f"{ref}: no such registered model in {runs.tracking_uri()} "
                               f"({first_line(e)})") from None
    return ref


def from_mlflow(ref: str, tmp: Path) -> Ref:
    client = runs.client()
    run_id = run_of(ref, client)
    runs.open_run(run_id)  # one line when the store lacks it
    import mlflow.artifacts

    def fetch(artifact: str) -> Path | None:
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact,
                                                            dst_path=str(tmp)))
        except Exception:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
            return None
    path = fetch(MODEL)
    if path is None:
        raise VitlensError(f"{ref}: MLflow run {run_id} has no {MODEL} artifact (the publish stage "
                           "logs it: rerun `dvc repro publish`)")
    reports = {}
    for key, (_, artifact) in REPORTS.items():
        got = fetch(artifact)
        reports[key] = parse_json(got.read_text()) if got else None
    return Ref(ref, path, reports)


def from_dvc(ref: str, tmp: Path) -> Ref:
    import dvc.api

    path = tmp / "model.pt"
    try:
        with dvc.api.open(MODEL, rev=ref, mode="rb") as src, path.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    except Exception as e:  # noqa: BLE001 - DVC and git fail in many ways for a name they lack
        raise VitlensError(f"{ref}: no model file, MLflow run, DVC experiment or git revision of that "
                           f"name ({first_line(e)})") from None

    def read(local: str) -> Any:
        try:
            return parse_json(dvc.api.read(local, rev=ref))
        except Exception:  # noqa: BLE001 - a revision without that report
            return None
    return Ref(ref, path, {k: read(local) for k, (local, _) in REPORTS.items()})


def resolve(ref: str, tmp: Path) -> Ref:
    """The model `ref` names; `tmp` (a folder, made here) holds what is fetched for it."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = Path(ref)
    if path.is_file():
        return from_file(ref, path)
    if path.is_dir() and (path / MODEL).is_file():  # a project folder
        return from_file(ref, path / MODEL)
    if ref.startswith(("runs:/", "models:/")) or RUN_ID.fullmatch(ref):
        return from_mlflow(ref, tmp)
    if path.suffix in (".pt", ".pth") or path.exists():
        raise VitlensError(f"{ref} not found (or not a model file): give a model file, an MLflow run "
                           "or a DVC experiment name")
    return from_dvc(ref, tmp)
