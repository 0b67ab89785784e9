"""An exponential moving average of the weights (train.ema): the average, not the last
step's weights, is what a run validates, tests and saves. Averaging over the last ~1/(1 -
decay) steps smooths the noise of the final steps at no cost per image but one lerp."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """A copy of `model` in eval mode that follows its weights: after each step,
    avg += (1 - d) * (w - avg), with d = min(decay, (1 + n) / (10 + n)) after n updates, so
    the first steps' averages are not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float):
        assert 0.0 < decay < 1.0, f"EMA decay must be in (0, 1), got {decay}"
        self.model = copy.deepcopy(model).eval()
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for a, w in zip(self.model.parameters(), model.parameters(), strict=True):
            a.lerp_(w, 1.0 - d)
        for buf, src in zip(self.model.buffers(), model.buffers(), strict=True):
            buf.copy_(src)  # buffers (fixed positions) are not trained: copied, not averaged

    def state(self) -> dict[str, Any]:
        return {"ema": self.model.state_dict(), "ema_updates": self.updates}

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["ema"])
        self.updates = state["ema_updates"]
