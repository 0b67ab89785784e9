"""CUDA-only checks of the real training loop, skipped without a GPU: the bf16 path learns,
and an epoch's host syncs do not grow with its steps (a per-step sync would let the GPU idle
while the CPU waits, every step), and the profile ranks kernels."""
from collections.abc import Callable

import pytest
import torch

from benchmarks.profiling import host_syncs, profile_training
from vitlens.data.imageset import load_arrays
from vitlens.train import loop

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_bf16_training_learns_on_cuda(tiny_params, cifar_npz, tmp_path):
    params = tiny_params(**{"train.device": "cuda", "train.epochs": 4})
    result = loop.train(params, load_arrays(cifar_npz), checkpoint=tmp_path / "ckpt.pt")
    assert result.device.type == "cuda"
    assert result.history[-1]["val_acc"] > 0.3


def test_an_epochs_host_syncs_do_not_grow_with_its_steps(tiny_params, cifar_npz, tmp_path):
    data = load_arrays(cifar_npz)

    def epoch(subset: int) -> Callable[[], object]:
        # 5 or 11 steps of 32 images: both below the progress bar's sync every 20 steps
        params = tiny_params(**{"train.device": "cuda", "train.epochs": 1,
                                "data.train_subset": subset})
        return lambda: loop.train(params, data, checkpoint=tmp_path / f"{subset}.pt")

    epoch(160)()  # CUDA context, cuBLAS handles and kernels are made once, not counted
    few, many = host_syncs(epoch(160)), host_syncs(epoch(352))
    assert few == many, f"{few} syncs in a 5-step epoch, {many} in an 11-step one"


def test_the_profiled_step_never_syncs_and_ranks_kernels(tiny_params, cifar_npz):
    params = tiny_params(**{"train.device": "cuda"})
    split, _, norm = loop.device_splits(params, load_arrays(cifar_npz), torch.device("cuda"))
    p = profile_training(params, split, norm, mode=None, steps=5, warmup=2)
    assert p["syncs_per_step"] == 0, p["verdict"]
    assert p["ranked_by"] == "GPU kernel time" and p["kernels_per_step"] > 0
    assert 0 < p["gpu_busy_share"] <= 1.05  # the kernels fit in the step's wall time
