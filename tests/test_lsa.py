"""Locality self-attention (model.lsa): no token attends to itself, a learned scale; the
fused and explicit paths must agree with it on. The CLS-only last block is checked with it
on and off in test_model.py (test_cls_only_last_block_matches_the_full_block)."""
import math

import torch

from vitlens.model.vit import ViT, param_groups


def tiny(**kw) -> ViT:
    args = dict(image_size=32, patch_size=4, num_classes=10, dim=32, depth=3, heads=4,
                mlp_ratio=2.0, lsa=True)
    return ViT(**{**args, **kw})


def test_no_token_attends_to_itself_and_the_fused_path_agrees():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(4, 3, 32, 32)
    explicit, attns = model(x, return_attn=True)
    for a in attns:  # (B, heads, 65, 65)
        assert a.diagonal(dim1=-2, dim2=-1).abs().max() == 0
        torch.testing.assert_close(a.sum(-1), torch.ones(4, 4, 65))
    torch.testing.assert_close(model(x), explicit, rtol=1e-4, atol=1e-5)


def test_each_layer_learns_its_scale_without_weight_decay():
    torch.manual_seed(0)
    model = tiny()
    scales = [b.attn.log_scale for b in model.blocks]
    for s in scales:
        assert math.isclose(s.item(), math.log(8**-0.5), rel_tol=1e-6), "starts at head_dim^-0.5"
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(s.grad is not None and s.grad.abs() > 0 for s in scales)
    no_decay = param_groups(model, 0.05)[1]["params"]
    assert all(any(s is p for p in no_decay) for s in scales)
    assert tiny(lsa=False).blocks[0].attn.log_scale is None, "off: no new parameter"


def test_a_larger_scale_sharpens_attention_in_both_paths():
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    before, attn0 = model(x, return_attn=True)
    with torch.no_grad():
        for b in model.blocks:
            b.attn.log_scale += 1.0
    after, attn1 = model(x, return_attn=True)
    assert attn1[0].amax(-1).mean() > attn0[0].amax(-1).mean()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(model(x), after, rtol=1e-4, atol=1e-5)
