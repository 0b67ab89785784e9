"""What the train stage wrote, loaded once: the one way every consumer (the stages after
train, predict, serving, the GPU check) gets a trained model and what belongs with it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitlens.config import ModelConfig
from vitlens.data.normalize import Normalizer
from vitlens.device import pick_device, use_bf16
from vitlens.errors import VitlensError
from vitlens.model.pixels import PixelClassifier
from vitlens.model.record import MODEL_FORMAT
from vitlens.model.vit import ViT, build_model
from vitlens.tracking import runs


@dataclass
class Trained:
    """A model file of the train stage: the ViT (eval mode, on `device`), the normaliser of its
    training split, the class names, its MLflow run id ("" when untracked) and the params it
    was trained with; `record` is the whole file (history, git commit, ...)."""

    vit: ViT
    norm: Normalizer
    classes: list[str]
    run_id: str
    params: dict[str, dict[str, Any]]
    record: dict[str, Any]
    device: torch.device
    bf16: bool  # the precision it trained in, resolved on `device`: every pass over it uses it

    @property
    def history(self) -> list[dict[str, float]]:
        return list(self.record["history"])

    @property
    def image_size(self) -> int:
        return int(self.params["model"]["image_size"])

    def pixel_classifier(self) -> PixelClassifier:
        """The served module on this model's device: uint8 (N, H, W, 3) -> probabilities."""
        return PixelClassifier(self.vit, self.norm).eval().to(self.device)

    def run(self, enabled: bool) -> runs.Run | None:
        """The training run, reopened for a later stage to log into; None when tracking is off
        (`enabled`, the stage's tracking.enabled) or the model was trained untracked."""
        return runs.open_run(self.run_id) if enabled and self.run_id else None


def with_model_defaults(params: dict[str, dict[str, Any]], old: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The record's params with the model keys it predates at the values it was built with: an
    older run then compares equal to a newer one on those keys (`vitlens compare`, the
    explorer's params diff), not as a change from nothing."""
    return {**params, "model": {**old, **params.get("model", {})}}


def load_trained(path: str | Path, device: torch.device | str = "auto") -> Trained:
    """Load a model file of the train stage onto `device` ("auto": cuda, then mps, then cpu);
    a missing or foreign file is a one-line VitlensError."""
    dev = pick_device(device) if isinstance(device, str) else device
    try:
        rec = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VitlensError(f"{path} not found: run the train stage first (dvc repro train)") from None
    except Exception as e:  # noqa: BLE001 - truncated or foreign files fail in many ways
        raise VitlensError(f"{path} is not a readable model file ({str(e).splitlines()[0]}): "
                           "rerun the train stage (dvc repro train)") from None
    if not isinstance(rec, dict) or rec.get("format") != MODEL_FORMAT:
        raise VitlensError(f"{path} is not a model written by the train stage")
    # Records written before model.pos_embed, stem, token_drop, pool, lsa and registers existed.
    old = {"pos_embed": "learned", "stem": "patch", "token_drop": 0.0, "pool": "cls", "lsa": False,
           "registers": 0}
    vit = build_model(ModelConfig(**{**old, **rec["model_config"]}), rec["num_classes"])
    vit.load_state_dict(rec["state_dict"])
    vit = vit.to(dev).eval()
    return Trained(vit=vit, norm=Normalizer(rec["mean"], rec["std"]), classes=list(rec["classes"]),
                   run_id=rec["mlflow_run_id"], params=with_model_defaults(rec["params"], old),
                   record=rec, device=dev,
                   bf16=use_bf16(rec["params"]["train"].get("precision", "fp32"), dev))
