"""Where the tensors live and in which precision: device choice and autocast."""
from __future__ import annotations

from typing import Any

import torch

from vitlens.errors import VitlensError


def pick_device(name: str) -> torch.device:
    """`auto` = cuda, then mps, then cpu; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VitlensError("train.device=cuda but no CUDA device is available (use auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise VitlensError("train.device=mps but MPS is not available (use auto or cpu)")
    return torch.device(name)


def autocast(device: torch.device) -> Any:
    """bf16 on CUDA (no loss scaling needed), full fp32 elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
