"""The served model in MLflow: a pixel model logged into its training run in MLflow's pt2
format and registered in the Model Registry (the publish stage's work, never training's)."""
from __future__ import annotations

from typing import Any

from vitlens.errors import uninterruptible
from vitlens.tracking.retry import retry
from vitlens.tracking.runs import Run


def log_model(run: Run, model: Any, example: Any, *, classes: list[str],
              registered_model: str) -> str | None:
    """Log `model` (a CPU module in eval mode) in MLflow's pt2 format, with `example` (a
    numpy batch) as its input example and the signature `example` -> output; register it
    under `registered_model` unless that is empty. Returns the URI to load it by
    (`models:/<name>/<version>` when registered), None if the store is unreachable.

    pip requirements are given so MLflow does not infer them (slow, and it may try the
    network); `classes` go into the model's metadata to name the output columns."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]

    def log() -> Any:
        # No `mlflow.start_run`, whose exit would mark the run FINISHED mid-stage: the
        # model is created in the run's experiment (without an active run MLflow would
        # pick the default one) and run_id goes through to mlflow.models.Model.log.
        stored = retry(run.client.get_run, run.id)
        with uninterruptible():
            logged = mlflow.initialize_logged_model(
                name="model", source_run_id=run.id, experiment_id=stored.info.experiment_id,
                params=dict(stored.data.params))
            return mlflow.pytorch.log_model(
                model, name="model", signature=infer_signature(example, out),
                input_example=example, pip_requirements=pins,
                metadata={"classes": list(classes)},
                registered_model_name=registered_model or None, model_id=logged.model_id,
                run_id=run.id)
    info = run.attempt("the model", log)
    if info is None:
        return None
    if registered_model:
        return f"models:/{registered_model}/{info.registered_model_version}"
    return str(info.model_uri)
