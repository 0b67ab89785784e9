"""The models a command runs: the train stage's model file, or a logged MLflow model.

Both answer `probabilities(uint8 (N, S, S, 3)) -> (N, classes)` through the module MLflow
serves (`vitlens.model.pixels.PixelClassifier`), and name their `classes` and input `size`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from vitlens.errors import VitlensError, first_line
from vitlens.explain.attention import upsample_map
from vitlens.explain.maps import compute_maps
from vitlens.model.trained import load_trained
from vitlens.tracking import runs


class FileModel:
    """A model file of the train stage: probabilities from the module MLflow serves, maps
    from the ViT's explicit-attention path."""

    def __init__(self, path: Path, device: torch.device | str = "auto"):
        self.trained = load_trained(path, device)
        self.served = self.trained.pixel_classifier()
        self.classes: list[str] = self.trained.classes
        self.size: int = self.trained.image_size
        self.device = self.trained.device

    @torch.no_grad()
    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, classes) for uint8 (N, S, S, 3) pixels."""
        return self.served(torch.from_numpy(x).to(self.device)).cpu().numpy()

    def maps(self, x: np.ndarray) -> np.ndarray:
        """(N, S, S) attention rollout for uint8 (N, S, S, 3) pixels."""
        nchw = torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2)
        maps = compute_maps(self.trained.vit, self.trained.norm(nchw), grad=False)
        return upsample_map(maps.rollout, x.shape[1]).cpu().numpy()


class MlflowModel:
    """A logged or registered MLflow model (runs:/..., models:/...) through pyfunc: the
    probabilities the served model gives."""

    def __init__(self, uri: str):
        import mlflow.pyfunc

        runs.client()  # runs:/ and models:/ resolve against the project's store
        try:
            self.model = mlflow.pyfunc.load_model(uri)
        except Exception as e:  # noqa: BLE001 - MLflow raises many kinds for a bad URI
            raise VitlensError(
                f"cannot load MLflow model {uri} from {runs.tracking_uri()} "
                f"({first_line(e)}); the train stage logs runs:/<run_id>/model and "
                "registers models:/vitlens-cifar10/<version>") from None
        meta = self.model.metadata
        classes = (meta.metadata or {}).get("classes")
        if not classes:
            raise VitlensError(f"{uri} is not a vitlens model: its metadata names no classes")
        self.classes: list[str] = list(classes)
        self.size: int = meta.get_input_schema().inputs[0].shape[1]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(x))


def top_classes(probs: np.ndarray, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """The k most probable (class, probability) per row of (N, classes), most probable first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]
