"""Where the tensors live and in which precision: device choice and autocast."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vitlens.config import PRECISIONS
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


# CPU flags of native bf16 matrix products (Zen 4, Sapphire Rapids and later); without
# them bf16 is emulated, many times slower than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux lists them; empty where there is no such file."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def native_bf16_cpu() -> list[str]:
    """The native-bf16 flags this CPU has (none: bf16 would be emulated)."""
    flags = cpu_flags()
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether a model autocasts to bf16, in training and in every pass over it after: the
    one place train.precision is resolved, where auto = on CUDA and on a CPU
    with native bf16 (NATIVE_BF16_FLAGS), fp32 elsewhere (MPS included). The preset's epoch
    ran 1.7x faster in bf16 on an Intel Xeon with AMX and 2.4x on a Zen 5 with AVX512-BF16
    alone, within half a point of fp32's validation accuracy after 3 epochs (docs/bench.md)."""
    assert precision in PRECISIONS, f"precision {precision!r} is not one of {PRECISIONS}"
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and bool(native_bf16_cpu()))


def precision_line(bf16: bool, device: torch.device) -> str:
    """The train stage's one line on the number format it trains in, and why."""
    if not bf16:
        return f"precision: fp32 on {device.type}"
    why = "" if device.type != "cpu" else (
        f" (this CPU has {', '.join(native_bf16_cpu())})" if native_bf16_cpu()
        else " (this CPU has no native bf16: expect it slower than fp32)")
    return f"precision: bf16 autocast on {device.type}{why}"


def autocast(device: torch.device, bf16: bool) -> Any:
    """bf16 autocast when `bf16` (what use_bf16 decided; no loss scaling needed), else fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
