"""The attention core, forward and backward, per kernel: SDPA's math and flash backends (and
its own choice), and the explicit softmax(q k^T / sqrt(d)) v of `model.Attention`'s weights
path, at a model's shapes. What the bench's attention table reports."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from vitlens.config import ModelConfig
from vitlens.train.harness import alternate, summarize_calls, time_calls

BACKENDS = {"sdpa_math": SDPBackend.MATH, "sdpa_flash": SDPBackend.FLASH_ATTENTION}


def explicit(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(B, heads, N, d) each -> (B, heads, N, d), through the (B, heads, N, N) weights."""
    return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1) @ v


def kernels(device: torch.device) -> dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]]:
    """Every attention kernel that runs on `device`, by name."""
    out: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
        "sdpa_default": F.scaled_dot_product_attention, "explicit": explicit}
    for name, backend in BACKENDS.items():
        def run(q: Tensor, k: Tensor, v: Tensor, backend: SDPBackend = backend) -> Tensor:
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        out[name] = run
    return out


def shapes(cfg: ModelConfig, batch_size: int) -> tuple[int, int, int, int]:
    """(B, heads, N, head_dim) of one block's attention: N = patches + the CLS token."""
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    return batch_size, cfg.heads, tokens, cfg.dim // cfg.heads


def bench_attention(cfg: ModelConfig, batch_size: int, *, steps: int, rounds: int,
                    device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Median forward + backward time of each kernel on random q, k, v of the model's
    shapes in `dtype` (bf16: what autocast hands attention), times `depth` (one call per
    block), and each one's largest difference from SDPA's default output."""
    B, H, N, D = shapes(cfg, batch_size)
    gen = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device=device, generator=gen).to(dtype).requires_grad_()
               for _ in range(3))
    grad = torch.randn(B, H, N, D, device=device, generator=gen).to(dtype)
    found = kernels(device)
    runnable, failed = {}, {}
    with torch.no_grad():
        want = F.scaled_dot_product_attention(q, k, v)
    for name, fn in found.items():
        try:
            with torch.no_grad():
                diff = (fn(q, k, v) - want).abs().max().item()
        except RuntimeError as e:  # a backend without a kernel for this device or shape
            failed[name] = str(e).splitlines()[0][:200]
            continue
        runnable[name] = (fn, diff)

    def step(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(cfg.depth):
                fn(q, k, v).backward(grad)
        return run
    steps_by = {name: step(fn) for name, (fn, _) in runnable.items()}
    for s in steps_by.values():
        time_calls(s, 1, device)
    times = alternate(steps_by, n=steps, rounds=rounds, device=device)
    out: dict[str, Any] = {"shape_b_heads_n_d": [B, H, N, D], "blocks": cfg.depth,
                           "dtype": str(want.dtype).removeprefix("torch.")}
    for name, by_round in times.items():
        r = summarize_calls(by_round, batch_size)
        out[name] = {"median_ms": 1000 * r["median_s"], "max_abs_diff": runnable[name][1]}
    fastest = min(times, key=lambda n: out[n]["median_ms"])
    out["fastest"] = fastest
    out["speedup_fastest_over_default"] = (out["sdpa_default"]["median_ms"]
                                           / out[fastest]["median_ms"])
    out.update({f"{name}_failed": why for name, why in failed.items()})
    return out
