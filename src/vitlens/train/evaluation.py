"""Test-set metrics: the logits of a split, accuracy, loss, per-class accuracy
and the confusion matrix."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlens.data.normalize import Normalizer
from vitlens.data.split import Split, batches
from vitlens.device import autocast


@torch.no_grad()
def split_logits(model: nn.Module, split: Split, norm: Normalizer, batch_size: int,
                 device: torch.device, *, bf16: bool, flip: bool = False) -> Tensor:
    """Logits (N, classes) in float32 on the CPU, in the order of the split; with `flip`,
    the mean of each image's logits and its mirror's (test-time augmentation). `bf16`: the
    model's precision (device.use_bf16)."""
    model.eval()
    out = []
    for xb, _ in batches(split, batch_size):
        x = norm(xb)  # (B, 3, H, W)
        with autocast(device, bf16):
            logits = model(x).float()
            if flip:
                logits = (logits + model(x.flip(-1)).float()) / 2
        out.append(logits.cpu())
    return torch.cat(out)


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    confusion: np.ndarray  # (classes, classes) counts; rows = true, columns = predicted
    predictions: np.ndarray  # (N,) predicted class per image
    classes: list[str]

    def per_class_accuracy(self) -> dict[str, float]:
        support = self.confusion.sum(axis=1)
        hits = np.diag(self.confusion)
        return {c: float(h / s) if s else float("nan")
                for c, h, s in zip(self.classes, hits, support)}

    def metrics(self) -> dict:
        return {"accuracy": self.accuracy, "loss": self.loss,
                "num_images": int(self.confusion.sum()),
                "per_class_accuracy": self.per_class_accuracy()}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(y_true * num_classes + y_pred,
                       minlength=num_classes**2).reshape(num_classes, num_classes)


def evaluate_logits(logits: Tensor, y: Tensor, classes: list[str]) -> Evaluation:
    y = y.cpu()
    pred = logits.argmax(1)
    cm = confusion_matrix(y.numpy(), pred.numpy(), len(classes))
    return Evaluation(loss=F.cross_entropy(logits, y).item(),
                      accuracy=(pred == y).float().mean().item(),
                      confusion=cm, predictions=pred.numpy(), classes=classes)


def confusion_rows(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> list[dict]:
    """One row per image, the shape DVC's `confusion` plot template reads."""
    return [{"actual": classes[t], "predicted": classes[p]} for t, p in zip(y_true, y_pred)]


def softmax_confidence(logits: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, its probability) per row."""
    probs = torch.softmax(logits.float(), dim=1)
    conf, pred = probs.max(dim=1)
    return pred.numpy(), conf.numpy()
