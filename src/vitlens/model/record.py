"""The model file the train stage writes: weights, config, classes, normalisation, history,
git commit and MLflow run id, in one dict that loads with weights_only=True.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from vitlens.config import Params
from vitlens.model.vit import ViT

MODEL_FORMAT = "vitlens-vit/1"


def model_record(model: ViT, params: Params, classes: list[str], *, mean: list[float],
                 std: list[float], history: list[dict[str, float]], git_commit: str,
                 run_id: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to rebuild and use the model (the normalisation too), and `extra`
    (the attention snapshots); loads with weights_only=True."""
    return {"format": MODEL_FORMAT, "state_dict": model.state_dict(),
            "model_config": asdict(params.model), "num_classes": len(classes),
            "classes": classes, "mean": mean, "std": std,
            "params": params.to_dict(), "git_commit": git_commit, "mlflow_run_id": run_id or "",
            "history": history, **(extra or {})}

