"""The CPU recipe's new levers, each a param that is off by default: Muon for the blocks'
matrices (train.optimizer), MixUp and CutMix (train.mixup, train.cutmix), TrivialAugment
on whole uint8 batches (train.trivial_augment) and repeated augmentation (train.repeat_aug).
Each test fails when its lever is skipped."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from vitlens.data.mix import cutmix, mix_batch, mixup
from vitlens.data.normalize import Normalizer
from vitlens.data.split import Split, batch_indices
from vitlens.data.trivial import OPS, affine_matrix, colour_op, trivial_augment
from vitlens.model.vit import ViT, param_groups
from vitlens.train import step
from vitlens.train.optim import MuonAdamW, make_optimizer


def tiny_vit() -> ViT:
    torch.manual_seed(0)
    return ViT(image_size=16, patch_size=4, num_classes=5, dim=32, depth=2, heads=2, mlp_ratio=2.0)


def one_step(model: ViT, opt) -> dict[str, torch.Tensor]:
    """The change of every parameter after one step on a fixed batch."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 5
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_muon_moves_the_blocks_matrices_otherwise_and_the_rest_as_adamw(tiny_params):
    adam_t = tiny_params(**{"train.optimizer": "adamw"}).train
    muon_t = tiny_params(**{"train.optimizer": "muon"}).train
    a, m = tiny_vit(), tiny_vit()
    da = one_step(a, make_optimizer(a, adam_t, torch.device("cpu")))
    muon = make_optimizer(m, muon_t, torch.device("cpu"))
    assert isinstance(muon, MuonAdamW)
    dm = one_step(m, muon)
    matrices = [n for n, p in m.named_parameters() if n.startswith("blocks.") and p.ndim == 2]
    assert len(matrices) == 8  # qkv, proj and the MLP's two, in each of 2 blocks
    for n in dm:
        if n in matrices:
            assert not torch.allclose(dm[n], da[n], atol=1e-7), n
        else:
            torch.testing.assert_close(dm[n], da[n], msg=n)  # embedding, head, norms, biases
    # Its state round-trips through a checkpoint.
    again = make_optimizer(copy.deepcopy(m), muon_t, torch.device("cpu"))
    again.load_state_dict(muon.state_dict())
    assert len(again.param_groups) == 3 and again.param_groups[0]["lr"] == muon_t.lr


def test_muon_takes_the_block_matrices_and_nothing_else():
    model = tiny_vit()
    groups = param_groups(model, 0.05, muon=True)
    names = {id(p): n for n, p in model.named_parameters()}
    hidden = {names[id(p)] for g in groups if g.get("muon") for p in g["params"]}
    assert hidden == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert not any(g.get("muon") for g in param_groups(model, 0.05))


def constant_images(n: int = 6, side: int = 8) -> torch.Tensor:
    """Image i all of value i: each pixel says whose it is."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, side, side).clone()


def test_cutmix_mixes_the_labels_in_the_ratio_of_its_pixels():
    x, g = constant_images(), torch.Generator().manual_seed(0)
    for lam in (0.3, 0.5, 0.8, 0.95):
        out, kept = cutmix(x, lam, g)
        own = (out == x).float().mean(dim=(1, 2, 3))  # share of each image's own pixels
        partner = (out == x.flip(0)).float().mean(dim=(1, 2, 3))
        torch.testing.assert_close(own, torch.full((6,), kept))
        torch.testing.assert_close(partner, torch.full((6,), 1 - kept))
        assert 0 < kept < 1
    y = torch.arange(6) % 4
    for seed in range(20):
        out, target = mix_batch(x, y, 4, mixup_alpha=0.0, cutmix_alpha=1.0,
                                generator=torch.Generator().manual_seed(seed))
        own = (out == x).float().mean(dim=(1, 2, 3))
        onehot = torch.nn.functional.one_hot(y, 4).float()
        torch.testing.assert_close(target, own[:, None] * onehot + (1 - own[:, None]) * onehot.flip(0))


def test_mixup_blends_images_and_labels_alike():
    x, y = constant_images(), torch.arange(6) % 3
    out, target = mix_batch(x, y, 3, mixup_alpha=0.8, cutmix_alpha=0.0,
                            generator=torch.Generator().manual_seed(3))
    lam = float(out[0, 0, 0, 0] - x[-1, 0, 0, 0]) / float(x[0, 0, 0, 0] - x[-1, 0, 0, 0])
    torch.testing.assert_close(out, mixup(x, lam))
    onehot = torch.nn.functional.one_hot(y, 3).float()
    torch.testing.assert_close(target, lam * onehot + (1 - lam) * onehot.flip(0))
    torch.testing.assert_close(target.sum(1), torch.ones(6))


def test_both_on_picks_one_per_batch_and_off_changes_nothing():
    x, y = constant_images(), torch.arange(6)
    kinds = set()
    for seed in range(30):
        out, _ = mix_batch(x, y, 6, mixup_alpha=0.8, cutmix_alpha=1.0,
                           generator=torch.Generator().manual_seed(seed))
        integral = bool((out == out.round()).all())  # CutMix pastes pixels, MixUp blends them
        kinds.add("cutmix" if integral else "mixup")
    assert kinds == {"cutmix", "mixup"}
    out, target = mix_batch(x, y, 6, mixup_alpha=0.0, cutmix_alpha=0.0, generator=torch.Generator())
    assert out is x and target is y


def test_a_mixed_batch_trains_on_soft_targets(tiny_params):
    t = tiny_params(**{"train.cutmix": 1.0, "train.mixup": 0.8, "train.trivial_augment": True}).train
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    make = step.batch_maker(Split(x, torch.arange(16) % 10), Normalizer([128.0] * 3, [64.0] * 3), t,
                            torch.Generator().manual_seed(0), classes=10)
    images, target = make(torch.arange(16))
    assert images.shape == (16, 3, 32, 32) and target.shape == (16, 10)
    torch.testing.assert_close(target.sum(1), torch.ones(16))
    stats = step.EpochStats(torch.device("cpu"))
    stats.add(torch.tensor(1.0), torch.nn.functional.one_hot(target.argmax(1), 10).float(), target)
    assert stats.accuracy() == 1.0


def test_trivial_augment_changes_a_uint8_batch_in_place_of_shape_and_dtype():
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = trivial_augment(x, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    changed = (out != x).flatten(1).any(1).float().mean()
    assert 0.75 < changed < 1.0, changed  # identity, and weak draws of some ops, change nothing
    again = trivial_augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, again), "seeded: a resumed run repeats"


@pytest.mark.parametrize("name,reference", [
    ("brightness", lambda x, f: TF.adjust_brightness(x, f)),
    ("color", lambda x, f: TF.adjust_saturation(x, f)),
    ("contrast", lambda x, f: TF.adjust_contrast(x, f)),
    ("sharpness", lambda x, f: TF.adjust_sharpness(x, f)),
])
def test_colour_ops_match_torchvision(name, reference):
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for m in (-0.7, 0.4, 1.0):
        ours = colour_op(name, x.float(), torch.full((4,), m)).clamp(0, 255).round().to(torch.uint8)
        theirs = reference(x, 1 + 0.9 * m)
        # torchvision rounds its grey image to uint8 before blending: off by up to 2 levels.
        assert (ours.int() - theirs.int()).abs().max() <= 2, (name, m)


def test_posterize_solarize_and_autocontrast_match_torchvision():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    m = torch.full((4,), 0.5)
    assert torch.equal(colour_op("posterize", x.float(), m).to(torch.uint8), TF.posterize(x, 6))
    assert torch.equal(colour_op("solarize", x.float(), m).to(torch.uint8), TF.solarize(x, 127.5))
    ours = colour_op("autocontrast", x.float(), m).round().to(torch.uint8)
    assert (ours.int() - TF.autocontrast(x).int()).abs().max() <= 1


def test_a_translation_shifts_whole_pixels_and_fills_black():
    x = torch.randint(1, 256, (1, 3, 32, 32), dtype=torch.uint8)
    m = torch.tensor([4 / 32 / (150 / 331)])  # 4 pixels
    grid = torch.nn.functional.affine_grid(affine_matrix("translate_x", m), [1, 3, 32, 32], align_corners=False)
    out = torch.nn.functional.grid_sample(x.float(), grid, mode="nearest", align_corners=False)
    assert torch.equal(out[..., :, :28], x[..., :, 4:].float()) and (out[..., :, 28:] == 0).all()
    assert "identity" in OPS and len(OPS) == 13


def test_the_training_batch_is_trivially_augmented_when_asked(tiny_params):
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm, split = Normalizer([128.0] * 3, [64.0] * 3), Split(x, torch.zeros(64, dtype=torch.long))
    plain = {"train.crop_padding": 0, "train.flip": False}
    for on in (False, True):
        t = tiny_params(**plain, **{"train.trivial_augment": on}).train
        out, _ = step.batch_maker(split, norm, t, torch.Generator().manual_seed(0), classes=10)(torch.arange(64))
        same = (out == norm(x)).flatten(1).all(1)
        assert (same.all() if not on else same.float().mean() < 0.25), on


def test_the_training_crop_pads_as_train_crop_fill_says(tiny_params):
    x = torch.randint(1, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    norm, split = Normalizer([0.0] * 3, [1.0] * 3), Split(x, torch.zeros(32, dtype=torch.long))
    black = {}
    for fill in ("zero", "reflect"):
        t = tiny_params(**{"train.crop_fill": fill}).train
        out, _ = step.batch_maker(split, norm, t, torch.Generator().manual_seed(0), classes=10)(torch.arange(32))
        black[fill] = bool((out == 0).any())
    assert black == {"zero": True, "reflect": False}


def test_repeated_augmentation_puts_each_images_copies_in_one_batch():
    batches = list(batch_indices(30, 6, torch.Generator().manual_seed(0), repeats=3))
    epoch = torch.cat(batches)
    assert len(batches) == 5 and len(epoch) == 30  # an epoch keeps its samples
    assert len(epoch.unique()) == 10  # a third of the images, three times each
    for b in batches:
        ids, counts = b.unique(return_counts=True)
        assert len(ids) == 2 and counts.tolist() == [3, 3], b
    plain = torch.cat(list(batch_indices(30, 6, torch.Generator().manual_seed(0))))
    assert sorted(plain.tolist()) == list(range(30))


def test_repeated_copies_are_augmented_apart(tiny_params):
    t = tiny_params(**{"train.repeat_aug": 3, "train.crop_padding": 4}).train
    split = Split(torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8), torch.arange(6))
    make = step.batch_maker(split, Normalizer((0.5,) * 3, (0.25,) * 3), t,
                            torch.Generator().manual_seed(0), classes=6)
    x, y = make(next(batch_indices(6, 6, torch.Generator().manual_seed(1), repeats=3)))
    assert y.tolist()[0:3] == [y[0].item()] * 3
    assert not torch.equal(x[0], x[1]) or not torch.equal(x[1], x[2])


def test_the_loop_draws_its_batches_with_train_repeat_aug(tiny_params, cifar_npz, tmp_path,
                                                          monkeypatch):
    from vitlens.data.imageset import load_arrays
    from vitlens.train import loop
    seen = []
    real = loop.batch_indices

    def spy(*args, **kwargs):
        seen.append(kwargs.get("repeats", 1))
        return real(*args, **kwargs)
    monkeypatch.setattr(loop, "batch_indices", spy)
    params = tiny_params(**{"train.repeat_aug": 2, "train.epochs": 1})
    loop.train(params, load_arrays(cifar_npz), checkpoint=tmp_path / "ckpt.pt")
    assert seen == [2]
