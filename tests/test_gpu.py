"""CUDA-only checks, skipped without a GPU: the bf16 training path learns, and a training
step (input pipeline, forward, backward, clipping, fused AdamW, running stats) never waits
on the host, which is what keeps the GPU busy."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlens import training
from vitlens.cifar import load_arrays
from vitlens.data import Split
from vitlens.model import build_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_bf16_training_learns_on_cuda(tiny_params, cifar_npz, tmp_path):
    params = tiny_params(**{"train.device": "cuda", "train.epochs": 4})
    result = training.train(params, load_arrays(cifar_npz), checkpoint=tmp_path / "ckpt.pt")
    assert result.device.type == "cuda"
    assert result.history[-1]["val_acc"] > 0.3


def test_train_step_never_syncs_with_the_host(tiny_params):
    params = tiny_params(**{"train.device": "cuda"})
    dev, t = torch.device("cuda"), params.train
    split = Split(torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, device=dev),
                  torch.randint(0, 10, (512,), device=dev))
    norm = training.Normalizer([0.5] * 3, [0.25] * 3)
    batch = training.batch_maker(split, norm, t, torch.Generator(dev).manual_seed(0))
    model = build_model(params.model, 10).to(dev)
    opt = training.make_optimizer(model, t, dev)
    stats = training.EpochStats(dev)
    idx = torch.arange(t.batch_size, device=dev)

    def step() -> None:
        x, y = batch(idx)
        with training.autocast(dev):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=t.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        stats.add(loss, logits, y)

    step()  # first calls create cached device tensors (normalisation constants, optimizer state)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert stats.n == 4 * t.batch_size
