"""The optimizer: AdamW, or Muon for the blocks' weight matrices with AdamW for the rest.

Muon (Jordan et al. 2024; `torch.optim.Muon`) orthogonalises each 2-D update by Newton-Schulz
iterations, the speedruns' optimizer for hidden matrices; embeddings, the head, norms and
biases stay on AdamW, as the speedruns keep them. Its update is scaled to AdamW's RMS
("match_rms_adamw", Liu et al. 2025), so both halves share train.lr, its schedule and
train.weight_decay: one lever, nothing else to tune.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitlens.config import TrainConfig
from vitlens.model.vit import param_groups


class MuonAdamW:
    """Two torch optimizers behind one: the loop sets lr on `param_groups` and calls
    `zero_grad` and `step`; checkpoints save and load both states."""

    def __init__(self, groups: list[dict[str, Any]], *, lr: float, fused: bool):
        muon = [{k: v for k, v in g.items() if k != "muon"} for g in groups if g.get("muon")]
        rest = [{k: v for k, v in g.items() if k != "muon"} for g in groups if not g.get("muon")]
        assert muon, "Muon needs at least one weight matrix"
        self.parts: list[torch.optim.Optimizer] = [
            torch.optim.Muon(muon, lr=lr, adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW(rest, lr=lr, betas=(0.9, 0.999), fused=fused)]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.parts for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.parts:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.parts[0].state_dict(), "adamw": self.parts[1].state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parts[0].load_state_dict(state["muon"])
        self.parts[1].load_state_dict(state["adamw"])


Optimizer = torch.optim.Optimizer | MuonAdamW


def make_optimizer(model: nn.Module, t: TrainConfig, device: torch.device) -> Optimizer:
    """train.optimizer: AdamW, decay on weight matrices only, or Muon + AdamW; AdamW's fused
    kernel where there is one (one launch per step on CUDA instead of one per op)."""
    fused = device.type in ("cuda", "cpu")
    if t.optimizer == "muon":
        return MuonAdamW(param_groups(model, t.weight_decay, muon=True), lr=t.lr, fused=fused)
    return torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.999),
                             fused=fused)
