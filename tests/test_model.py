import pytest
import torch

from vitlens.config import ModelConfig
from vitlens.model import layers
from vitlens.model.layers import DropPath
from vitlens.model.vit import ViT, build_model, param_groups, train_flops_per_image


def tiny(**kw) -> ViT:
    args = dict(image_size=32, patch_size=4, num_classes=10, dim=32, depth=2, heads=4,
                mlp_ratio=2.0)
    return ViT(**{**args, **kw})


def test_forward_shapes_and_attention_weights():
    model = tiny().eval()
    x = torch.randn(3, 3, 32, 32)
    logits, attns = model(x, return_attn=True)
    assert model(x).shape == logits.shape == (3, 10)
    assert len(attns) == 2
    for a in attns:
        assert a.shape == (3, 4, 65, 65)
        torch.testing.assert_close(a.sum(-1), torch.ones(3, 4, 65))


def test_fused_and_explicit_attention_agree():
    torch.manual_seed(0)
    model = tiny(dropout=0.1, attn_dropout=0.1, drop_path=0.1).eval()
    x = torch.randn(4, 3, 32, 32)
    fused = model(x)
    explicit, _ = model(x, return_attn=True)
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-5)


def test_bf16_on_a_cpu_takes_the_explicit_attention_and_keeps_the_logits(monkeypatch):
    """In bf16 on a CPU the model multiplies q, k, v itself (AMX runs those products, SDPA's
    CPU kernel does not): SDPA is never called, and the logits stay those of fp32."""
    torch.manual_seed(0)
    model = tiny().eval()
    x = torch.randn(4, 3, 32, 32)
    fp32 = model(x)

    def no_sdpa(*args, **kwargs):
        raise AssertionError("SDPA called in bf16 on a CPU")
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", no_sdpa)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(x)
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, rtol=0.05, atol=0.05)
    with pytest.raises(AssertionError, match="SDPA called"):
        model(x)  # fp32 keeps the fused kernel


@pytest.mark.parametrize("lsa", [False, True])
def test_cls_only_last_block_matches_the_full_block(lsa):
    """The fast path runs the last block for the CLS token alone; its logits and every
    gradient must equal those of the explicit path, which runs it for all tokens. With
    model.lsa the CLS query alone must still be kept from attending to itself, and its
    learned scale get the full block's gradient."""
    torch.manual_seed(0)
    model = tiny(depth=3, lsa=lsa)  # train mode, no dropout: both paths are deterministic
    x = torch.randn(4, 3, 32, 32)
    runs = []
    for explicit in (False, True):
        model.zero_grad()
        logits = model(x, return_attn=True)[0] if explicit else model(x)
        logits.square().sum().backward()
        runs.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (fast, fast_grads), (full, full_grads) = runs
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-5)
    for name, g in full_grads.items():
        torch.testing.assert_close(fast_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_mean_pool_reads_the_mean_of_the_patch_tokens():
    """model.pool=mean: the head reads the normalised mean of the last block's patch tokens,
    so every token runs the last block, and fused and explicit paths still agree."""
    torch.manual_seed(0)
    model = tiny(depth=2, pool="mean").eval()
    x = torch.randn(4, 3, 32, 32)
    captured = {}
    model.norm.register_forward_hook(lambda m, inp, out: captured.update(inp=inp[0]))
    logits = model(x)
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2)
    t = torch.cat([model.cls_token.expand(4, -1, -1), tokens], 1) + model.pos_embed
    for block in model.blocks:
        t = block(t)[0]
    torch.testing.assert_close(captured["inp"], t[:, 1:].mean(1))
    torch.testing.assert_close(logits, model.head(model.norm(t[:, 1:].mean(1))))
    torch.testing.assert_close(model(x, return_attn=True)[0], logits, rtol=1e-4, atol=1e-5)
    cls = tiny(depth=2)
    cls.load_state_dict(model.state_dict())
    assert not torch.allclose(cls.eval()(x), logits, atol=1e-3)


def test_every_parameter_gets_a_gradient():
    model = tiny(drop_path=0.0)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_build_model_reads_config():
    cfg = ModelConfig(image_size=32, patch_size=8, dim=48, depth=3, heads=3, mlp_ratio=1.5,
                      dropout=0.0, attn_dropout=0.0, drop_path=0.0, pos_embed="learned", stem="patch",
                      token_drop=0.0, pool="cls", lsa=False, registers=0)
    model = build_model(cfg, num_classes=7)
    assert model.grid == 4 and len(model.blocks) == 3
    assert model.blocks[0].mlp[0].out_features == 72
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_constructor_asserts_name_the_problem():
    with pytest.raises(AssertionError, match="divisible by patch size"):
        tiny(patch_size=5)
    with pytest.raises(AssertionError, match="divisible by heads"):
        tiny(dim=30, heads=4)


def test_weight_decay_only_on_matrices():
    model = tiny()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "cls_token" not in decayed and "pos_embed" not in decayed
    assert not any(n.endswith(".bias") or "norm" in n for n in decayed)
    assert "patch_embed.weight" in decayed and "head.weight" in decayed
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_drop_path_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    drop = DropPath(0.3).train()
    x = torch.ones(20_000, 5, 4)
    out = drop(x)
    per_sample = out.flatten(1)
    # Each sample is either dropped whole (0) or kept whole and rescaled by 1 / (1 - p).
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1 / 0.7)).all(1))
    assert (per_sample[:, 0] == 0).float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert out.mean().item() == pytest.approx(1.0, abs=0.02)
    assert torch.equal(drop.eval()(x), x)


def test_token_drop_keeps_cls_and_a_random_subset_in_training_and_every_token_otherwise():
    torch.manual_seed(0)
    model, x = tiny(token_drop=0.25), torch.randn(3, 3, 32, 32)
    full = tiny(token_drop=0.0)
    full.load_state_dict(model.state_dict())
    seen: list[torch.Tensor] = []
    model.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    embedded = (model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_embed[:, 1:])
    model.train()(x)
    assert model.keep == 48 and seen[-1].shape == (3, 1 + 48, 32)
    kept = seen[-1]
    torch.testing.assert_close(kept[:, 0], (model.cls_token + model.pos_embed[:, :1]).expand(3, -1, -1)[:, 0])
    for b in range(3):  # each kept token is one of the image's own tokens, none twice
        match = torch.cdist(kept[b, 1:], embedded[b]).argmin(1)
        torch.testing.assert_close(kept[b, 1:], embedded[b, match])
        assert len(set(match.tolist())) == 48
    assert not torch.equal(kept[0, 1:], embedded[0, :48])  # a random choice, not the first 48
    model.eval(), full.eval()
    torch.testing.assert_close(model(x), full(x))  # evaluation reads every token
    _, attns = model(x, return_attn=True)
    assert attns[0].shape == (3, 4, 65, 65)


@pytest.mark.parametrize("patch,dim,depth,mlp,stem,token_drop,pool,registers", [
    (4, 64, 3, 2.0, "patch", 0.0, "cls", 0), (2, 48, 2, 3.0, "patch", 0.0, "cls", 0),
    (8, 96, 1, 4.0, "patch", 0.0, "cls", 0), (4, 64, 3, 2.0, "conv", 0.0, "cls", 0),
    (8, 96, 1, 4.0, "conv", 0.0, "cls", 0), (4, 64, 3, 2.0, "patch", 0.25, "cls", 0),
    (4, 64, 2, 2.0, "conv", 0.5, "cls", 0), (4, 64, 3, 2.0, "patch", 0.0, "mean", 0),
    (4, 64, 2, 2.0, "patch", 0.25, "mean", 0), (4, 64, 3, 2.0, "patch", 0.25, "cls", 4),
    (4, 64, 2, 2.0, "patch", 0.0, "mean", 2)])
def test_train_flops_match_torchs_flop_counter(monkeypatch, patch, dim, depth, mlp, stem,
                                               token_drop, pool, registers):
    from torch.utils.flop_counter import FlopCounterMode

    def sdpa(q, k, v, **kw):  # the CPU's fused kernel is not counted: spell it out
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1) @ v
    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", sdpa)
    cfg = ModelConfig(image_size=32, patch_size=patch, dim=dim, depth=depth, heads=2,
                      mlp_ratio=mlp, dropout=0.0, attn_dropout=0.0, drop_path=0.0, pos_embed="learned",
                      stem=stem, token_drop=token_drop, pool=pool, lsa=False,
                      registers=registers)
    model, x = build_model(cfg, 10), torch.randn(4, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert train_flops_per_image(cfg) == pytest.approx(counter.get_total_flops() / 4, rel=0.01)


def seen_rows(model: ViT, row: int) -> list[int]:
    """Image rows whose pixels reach the token of patch (row, 0) of the embedding."""
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    model.patch_embed(x)[0, :, row, 0].square().sum().backward()
    return torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3))).flatten().tolist()


def test_the_conv_stem_gives_each_patch_a_token_centred_on_it():
    """model.stem=conv keeps the 8x8 grid of tokens (every map reads the same cells), but a
    token sees its 4x4 patch and 3 pixels around it, symmetrically: the maps are not shifted."""
    torch.manual_seed(0)
    patch, conv = tiny(), tiny(stem="conv")
    assert conv.patch_embed(torch.randn(2, 3, 32, 32)).shape == (2, 32, 8, 8)
    assert seen_rows(patch, 3) == list(range(12, 16))
    assert seen_rows(conv, 3) == list(range(9, 19))  # rows 12-15, 3 more on each side
    assert seen_rows(conv, 0) == list(range(0, 7))  # the image's edge is zero padding
    logits, attns = conv.eval()(torch.randn(3, 3, 32, 32), return_attn=True)
    assert logits.shape == (3, 10) and attns[0].shape == (3, 4, 65, 65)


def test_the_conv_stem_trains_and_is_decayed_like_the_patch_embedding():
    model = tiny(stem="conv")
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    decay, _ = param_groups(model, 0.05)
    kernels = {id(m.weight) for m in model.patch_embed if isinstance(m, torch.nn.Conv2d)}
    assert len(kernels) == 3 and kernels <= {id(p) for p in decay["params"]}
    with pytest.raises(AssertionError, match="power-of-2 patch size"):
        tiny(stem="conv", patch_size=1)
