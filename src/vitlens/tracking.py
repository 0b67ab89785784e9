"""MLflow tracking that survives DVC's temporary experiment copies.

The store defaults to `sqlite:///<root>/mlflow.db` with artifacts in `<root>/mlartifacts`, where
root is `$DVC_ROOT` (the main repository even inside `dvc exp run --temp/--queue` copies, which
DVC deletes afterwards) or the current directory. `MLFLOW_TRACKING_URI` overrides it.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from vitlens.errors import VitlensError  # noqa: E402


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def git_commit(cwd: str | os.PathLike = ".") -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _retry(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """SQLite allows one writer at a time; parallel queued experiments can see 'locked'."""
    for attempt in range(8):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only lock errors are retried
            if "locked" not in str(e) or attempt == 7:
                raise
            time.sleep(0.2 * 2**attempt)


EPOCH_METRICS = {"train_loss": "train/loss", "train_acc": "train/accuracy", "val_loss": "val/loss",
                 "val_acc": "val/accuracy", "lr": "lr", "epoch_seconds": "epoch_seconds",
                 "images_per_second": "images_per_second"}


def epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    """History row -> MLflow metric names (`train/loss`, `val/accuracy`, ...)."""
    return {EPOCH_METRICS[k]: v for k, v in row.items() if k in EPOCH_METRICS}


class Run:
    """One MLflow run, written through MlflowClient so no global active-run state leaks."""

    def __init__(self, client: Any, run_id: str):
        self.client, self.id = client, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            _retry(self.client.log_batch, self.id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        _retry(self.client.log_batch, self.id, metrics=items)

    def log_artifact(self, path: str | os.PathLike, artifact_dir: str) -> None:
        _retry(self.client.log_artifact, self.id, str(path), artifact_dir)

    def log_model(self, model: Any, example: Any) -> None:
        """The model with a signature and an input example; pip requirements are given so
        MLflow does not infer them (slow, and it may try the network)."""
        import mlflow
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            out = model(example).float().cpu().numpy()
        inp = example.cpu().numpy().astype(np.float32)
        with mlflow.start_run(run_id=self.id):
            mlflow.pytorch.log_model(model, name="model", signature=infer_signature(inp, out),
                                     input_example=inp,
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    def reopen(self) -> None:
        """Mark a resumed run RUNNING again (it was left KILLED or FAILED) and point its DVC
        tags at the experiment resuming it, not the one that started it."""
        _retry(self.client.update_run, self.id, status="RUNNING")
        now = dvc_tags()
        for name in (n.lower() for n in DVC_VARIABLES):
            if name in now:
                _retry(self.client.set_tag, self.id, name, now[name])
            elif name in _retry(self.client.get_run, self.id).data.tags:
                _retry(self.client.delete_tag, self.id, name)

    def log_missing_epochs(self, rows: list[dict[str, float]]) -> None:
        """Log the history rows whose epoch the store lacks: a run killed between its
        checkpoint and its metrics resumes with each epoch logged exactly once."""
        logged = {m.step for m in _retry(self.client.get_metric_history, self.id, "val/loss")}
        for row in rows:
            if int(row["epoch"]) not in logged:
                self.log_metrics(epoch_metrics(row), step=int(row["epoch"]))

    def finish(self, status: str) -> None:
        _retry(self.client.set_terminated, self.id, status)


def _client() -> Any:
    """A client on the project store; mlflow's global URI is pointed there too, since
    `mlflow.pytorch.log_model` logs through it (its default is relative to the cwd)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(tracking_uri=tracking_uri())


def _experiment_id(client: Any, name: str) -> str:
    exp = _retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    artifacts = (project_root() / "mlartifacts").as_uri()
    try:
        return _retry(client.create_experiment, name, artifact_location=artifacts)
    except Exception:  # noqa: BLE001 - another process may have created it first
        exp = _retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def create_run(experiment: str, run_name: str | None, tags: dict[str, Any]) -> Run:
    client = _client()
    exp_id = _experiment_id(client, experiment)
    run = _retry(client.create_run, exp_id, run_name=run_name,
                 tags={k: str(v) for k, v in tags.items()})
    return Run(client, run.info.run_id)


def _get_run(client: Any, run_id: str) -> Any:
    try:
        return _retry(client.get_run, run_id)
    except Exception as e:  # noqa: BLE001 - MlflowException for a run the store lacks
        raise VitlensError(f"MLflow run {run_id} not found in {tracking_uri()}: "
                           f"{str(e).splitlines()[0]}") from None


def open_run(run_id: str) -> Run:
    """A run that an earlier stage created (evaluate and visualize log into the training run)."""
    client = _client()
    _get_run(client, run_id)
    return Run(client, run_id)


@contextlib.contextmanager
def finishing(run: Run | None) -> Iterator[Run | None]:
    """Mark the run FINISHED, FAILED or KILLED however the block ends, never RUNNING forever."""
    try:
        yield run
    except KeyboardInterrupt:
        if run:
            run.finish("KILLED")
        raise
    except BaseException:
        if run:
            run.finish("FAILED")
        raise
    if run:
        run.finish("FINISHED")


DVC_VARIABLES = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE", "DVC_ROOT")


def dvc_tags() -> dict[str, str]:
    """Tags that lead from an MLflow run back to its DVC experiment."""
    return {n.lower(): os.environ[n] for n in DVC_VARIABLES if os.environ.get(n)}


def run_params(run_id: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The nested params a run was logged with, and its tags (to reproduce the run).

    Values were logged as text; YAML reads them back as the numbers, booleans and lists
    they were (config.parse_params accepts `1e-05`-style floats YAML 1.1 leaves as text).
    """
    import yaml

    data = _get_run(_client(), run_id).data
    nested: dict[str, dict[str, Any]] = {}
    for key, text in data.params.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = yaml.safe_load(text) if text else text
    return nested, dict(data.tags)
