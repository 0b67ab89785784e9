"""model.registers: extra learned tokens after the patches (Darcet et al. 2023). They train,
take attention, and stay out of every map, the patch-mean readout and the explorer's views."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitlens.config import ModelConfig
from vitlens.data.normalize import Normalizer
from vitlens.explain.attention import head_maps, mean_attention_distance, rollout_map
from vitlens.explain.maps import compute_maps, mean_attention_distance_over
from vitlens.model.trained import Trained
from vitlens.model.vit import ViT, build_model, param_groups
from vitlens.report import data as explorer

GRID, REGS = 4, 3
P = GRID * GRID


def vit(registers: int = REGS, **kw) -> ViT:
    torch.manual_seed(0)
    return ViT(image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, heads=2, mlp_ratio=2.0,
               registers=registers, **kw)


def test_registers_are_tokens_after_the_patches_that_train_without_weight_decay():
    model = vit(token_drop=0.25)
    x = torch.randn(6, 3, 16, 16)
    model.eval()
    _, attns = model(x, return_attn=True)
    assert all(a.shape == (6, 2, 1 + P + REGS, 1 + P + REGS) for a in attns)
    model.train()
    model(x).sum().backward()  # token drop keeps CLS and every register
    assert model.registers.shape == (1, REGS, 32) and model.registers.grad.abs().sum() > 0
    decay, no_decay = param_groups(model, 0.05)
    assert any(p is model.registers for p in no_decay["params"])
    assert not any(p is model.registers for p in decay["params"])
    assert vit(registers=0).registers is None  # off: no parameter at all


def test_the_record_rebuilds_a_model_with_its_registers():
    cfg = ModelConfig(image_size=16, patch_size=4, dim=32, depth=2, heads=2, mlp_ratio=2.0, dropout=0.0,
                      attn_dropout=0.0, drop_path=0.0, token_drop=0.0, pos_embed="learned", stem="patch",
                      pool="cls", lsa=False, registers=REGS)
    model = build_model(cfg, 5)
    assert model.n_registers == REGS
    again = build_model(cfg, 5)
    again.load_state_dict(model.state_dict())  # strict: the registers are in the state


def test_maps_read_the_patch_keys_alone():
    """Attention that sends half of every row to the registers: the rollout map is the patch
    part renormalised, head maps keep the patch part as it is."""
    n = 1 + P + REGS
    a = torch.zeros(1, 1, n, n)
    a[..., : 1 + P] = 0.5 / (1 + P)
    a[..., 1 + P:] = 0.5 / REGS
    a[0, 0, 0, 1 + 5] += 0.25  # CLS looks at patch 5 a little more ...
    a[0, 0, 0, 1 + P] -= 0.25  # ... and the first register a little less
    heads = head_maps(a, GRID, registers=REGS)
    assert heads.shape == (1, 1, GRID, GRID)
    torch.testing.assert_close(heads.flatten(), a[0, 0, 0, 1:1 + P])
    roll = rollout_map([a], GRID, registers=REGS)
    assert roll.sum().item() == pytest.approx(1.0) and roll.flatten().argmax() == 5
    with pytest.raises(ValueError, match="3 registers"):
        rollout_map([a[..., :-1, :-1]], GRID, registers=REGS)
    with pytest.raises(ValueError, match="0 registers"):
        head_maps(a, GRID)
    # Mean distance over patch queries and keys only: the register columns are dropped.
    uniform = torch.zeros(1, 1, n, n)
    uniform[..., 1:1 + P, 1:1 + P] = 1.0
    uniform[..., 1 + P:] = 5.0
    plain = torch.zeros(1, 1, 1 + P, 1 + P)
    plain[..., 1:, 1:] = 1.0
    torch.testing.assert_close(mean_attention_distance([uniform], GRID, 4, registers=REGS),
                               mean_attention_distance([plain], GRID, 4))


def test_a_model_with_registers_gives_patch_maps():
    model = vit().eval()
    x = torch.randn(4, 3, 16, 16)
    m = compute_maps(model, x)
    for name in ("rollout", "grad_rollout", "last_layer"):
        assert m.by_name(name).shape == (4, GRID, GRID), name
    torch.testing.assert_close(m.rollout.sum(dim=(1, 2)), torch.ones(4))
    assert mean_attention_distance_over(model, [x]).shape == (2, 2)


def test_the_patch_mean_readout_leaves_the_registers_out():
    model = vit(pool="mean").eval()
    seen = {}
    model.blocks[-1].register_forward_hook(lambda mod, inp, out: seen.update(tokens=out[0]))
    model.norm.register_forward_hook(lambda mod, inp, out: seen.update(read=inp[0]))
    model(torch.randn(2, 3, 16, 16))
    assert seen["tokens"].shape[1] == 1 + P + REGS
    torch.testing.assert_close(seen["read"], seen["tokens"][:, 1:1 + P].mean(dim=1))


def test_the_explorer_stores_cls_and_patch_attention_only():
    model = vit().eval()
    trained = Trained(vit=model, norm=Normalizer([0.5] * 3, [0.25] * 3), classes=[str(i) for i in range(5)],
                      run_id="", params={}, record={"history": []}, device=torch.device("cpu"), bf16=False)
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    gal = explorer.gallery(trained, images, ["a", "b"], [0, 1], layers=[0, 1], heads=[0, 1], batch_size=2)
    attn = explorer.unpack_attention(gal["attention"])
    assert attn.shape == (2, 2, 2, 1 + P, 1 + P)
    full = compute_maps(model, trained.norm(torch.from_numpy(images)), grad=False).attns[1][0, 1, 0]
    assert np.abs(attn[0, 1, 1, 0] - full[:1 + P].numpy()).max() < 0.05
