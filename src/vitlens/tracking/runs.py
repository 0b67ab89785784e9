"""MLflow tracking that survives DVC's temporary experiment copies.

The store defaults to `sqlite:///<root>/mlflow.db` with artifacts in `<root>/mlartifacts`, where
root is `$DVC_ROOT` (the main repository even inside `dvc exp run --temp/--queue` copies, which
DVC deletes afterwards) or the current directory. `MLFLOW_TRACKING_URI` overrides it; with
an http(s) server, artifacts go where the server keeps them (through it, when it proxies them).

A run outlives an unreachable server: the first failed call prints one warning, later calls
are skipped (no more waiting on retries), and `Run.finish` prints one line of what was not
logged. How long a call waits is MLflow's: MLFLOW_HTTP_REQUEST_MAX_RETRIES (default 7, with
exponential backoff) and MLFLOW_HTTP_REQUEST_TIMEOUT (default 120 s per request).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from vitlens.errors import VitlensError, first_line  # noqa: E402
from vitlens.tracking.retry import retry, unreachable  # noqa: E402


def project_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def git_commit(cwd: str | os.PathLike = ".") -> str:
    """The checked-out commit, or "" with one line on stderr saying why there is none (no git,
    not a checkout): the run's git_commit tag is then empty, never silently."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        why = f"git did not run ({first_line(e)})"
    else:
        if out.returncode == 0:
            return out.stdout.strip()
        why = (out.stderr.strip().splitlines() or ["git rev-parse HEAD failed"])[0]
    print(f"warning: no git commit to record for {Path(cwd).resolve()}: {why}", file=sys.stderr)
    return ""


EPOCH_METRICS = {"train_loss": "train/loss", "train_acc": "train/accuracy", "val_loss": "val/loss",
                 "val_acc": "val/accuracy", "lr": "lr", "epoch_seconds": "epoch_seconds",
                 "images_per_second": "images_per_second"}


def epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    """History row -> MLflow metric names (`train/loss`, `val/accuracy`, ...)."""
    return {EPOCH_METRICS[k]: v for k, v in row.items() if k in EPOCH_METRICS}


class Run:
    """One MLflow run, written through MlflowClient and `run_id` arguments, never
    `mlflow.start_run`: no global active-run state leaks, and nothing but `finish` ends it."""

    def __init__(self, client: Any, run_id: str):
        self.client, self.id = client, run_id
        self.lost: list[str] = []  # what was not logged since the store became unreachable

    def attempt(self, what: str, call: Callable[[], Any]) -> Any:
        """`call()`, unless the store has been unreachable before; an unreachable store is
        noted, not raised, so a long training outlives its tracking server."""
        if not self.lost:
            try:
                return call()
            except Exception as e:  # noqa: BLE001 - anything but a network failure is re-raised
                if not unreachable(e):
                    raise
                print(f"warning: MLflow at {tracking_uri()} is unreachable ({first_line(e)}); "
                      f"going on without logging to run {self.id}", file=sys.stderr, flush=True)
        self.lost.append(what)
        return None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.attempt("params", partial(retry, self.client.log_batch, self.id,
                                        params=items[i:i + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        what = f"epoch {step} metrics" if step else "metrics"
        self.attempt(what, lambda: retry(self.client.log_batch, self.id, metrics=items))

    def log_artifact(self, path: str | os.PathLike, artifact_dir: str) -> None:
        self.attempt(f"{artifact_dir}/{Path(path).name}",
                  lambda: retry(self.client.log_artifact, self.id, str(path), artifact_dir))

    def log_image(self, image: Any, *, key: str, step: int) -> None:
        """A uint8 (H, W, 3) array as the `key` image of `step`: the MLflow UI shows a slider."""
        self.attempt(f"image {key} of step {step}",
                  lambda: retry(self.client.log_image, self.id, image, key=key, step=step,
                                 synchronous=True))

    def log_dataset(self, about: dict[str, Any], context: str = "train") -> None:
        """The run's input dataset (MLflow's Dataset: name, digest, source, the rest as its
        profile), from ImageSet.about(); the digest is cut to the 32 hex digits MLflow's
        stores keep."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        source = str(about["source"])
        kind = "http" if source.startswith(("http://", "https://")) else "local"
        profile = {k: v for k, v in about.items() if k not in ("name", "digest", "source")}
        ds = Dataset(name=str(about["name"]), digest=str(about["digest"])[:32], source_type=kind,
                     source=json.dumps({"uri": source}), profile=json.dumps(profile))
        inp = DatasetInput(ds, [InputTag("mlflow.data.context", context)])
        self.attempt("the dataset", lambda: retry(self.client.log_inputs, self.id, datasets=[inp]))

    def reopen(self) -> None:
        """Mark a resumed run RUNNING again (it was left KILLED or FAILED) and point its DVC
        tags at the experiment resuming it, not the one that started it."""
        retry(self.client.update_run, self.id, status="RUNNING")
        now = dvc_tags()
        for name in (n.lower() for n in DVC_VARIABLES):
            if name in now:
                retry(self.client.set_tag, self.id, name, now[name])
            elif name in retry(self.client.get_run, self.id).data.tags:
                retry(self.client.delete_tag, self.id, name)

    def log_missing_epochs(self, rows: list[dict[str, float]]) -> None:
        """Log the history rows whose epoch the store lacks: a run killed between its
        checkpoint and its metrics resumes with each epoch logged exactly once."""
        logged = {m.step for m in retry(self.client.get_metric_history, self.id, "val/loss")}
        for row in rows:
            if int(row["epoch"]) not in logged:
                self.log_metrics(epoch_metrics(row), step=int(row["epoch"]))

    def finish(self, status: str) -> None:
        self.attempt(f"status {status}", lambda: retry(self.client.set_terminated, self.id, status))
        if self.lost:
            print(f"warning: not logged to MLflow run {self.id} at {tracking_uri()}: "
                  f"{', '.join(self.lost)}", file=sys.stderr, flush=True)


def client() -> Any:
    """A client on the project store; mlflow's global URI is pointed there too, since
    `mlflow.pytorch.log_model` logs through it (its default is relative to the cwd)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient(tracking_uri=tracking_uri())


def experiment_id(client: Any, name: str) -> str:
    exp = retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    # A server keeps the artifacts where it is told to (proxied through it by default); a
    # path on this machine would be wrong for everyone else.
    remote = tracking_uri().startswith(("http://", "https://"))
    artifacts = None if remote else (project_root() / "mlartifacts").as_uri()
    try:
        return retry(client.create_experiment, name, artifact_location=artifacts)
    except Exception:  # noqa: BLE001 - another process may have created it first
        exp = retry(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def create_run(experiment: str, run_name: str | None, tags: dict[str, Any]) -> Run:
    mc = client()
    try:
        exp_id = experiment_id(mc, experiment)
        run = retry(mc.create_run, exp_id, run_name=run_name,
                     tags={k: str(v) for k, v in tags.items()})
    except Exception as e:  # noqa: BLE001 - network and credential failures become one line
        refused(e)
        if not unreachable(e):
            raise
        raise VitlensError(f"MLflow at {tracking_uri()} is unreachable ({first_line(e)}): start "
                           "it, fix MLFLOW_TRACKING_URI, or set tracking.enabled=false") from None
    return Run(mc, run.info.run_id)


def refused(e: BaseException) -> None:
    """Raise a one-line VitlensError when a server with authentication turned the request
    away (HTTP 401 or 403), before any training; the password is never part of it."""
    code = getattr(e, "error_code", "")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        who = os.environ.get("MLFLOW_TRACKING_USERNAME")
        what = f"user {who!r} is not allowed" if code == "PERMISSION_DENIED" else \
            ("the credentials were refused" if who else "it needs credentials")
        raise VitlensError(f"MLflow at {tracking_uri()}: {what} ({code}); set "
                           "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the "
                           "environment, or set tracking.enabled=false") from None


def _get_run(client: Any, run_id: str) -> Any:
    try:
        return retry(client.get_run, run_id)
    except Exception as e:  # noqa: BLE001 - MlflowException for a run the store lacks
        refused(e)
        what = "cannot be read from an unreachable" if unreachable(e) else "not found in"
        raise VitlensError(f"MLflow run {run_id} {what} {tracking_uri()}: {first_line(e)}") from None


def open_run(run_id: str) -> Run:
    """A run that an earlier stage created (evaluate and visualize log into the training run)."""
    mc = client()
    _get_run(mc, run_id)
    return Run(mc, run_id)


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

    data = _get_run(client(), run_id).data
    nested: dict[str, dict[str, Any]] = {}
    for key, text in data.params.items():
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = yaml.safe_load(text) if text else text
    return nested, dict(data.tags)
