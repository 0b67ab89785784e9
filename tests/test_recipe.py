"""The recipe's options: a moving average of the weights, decaying label smoothing and token
drop, fixed 2-D sin-cos positions, a conv stem, cutout. Each is off in params.yaml; on, it must do what it says."""
import dataclasses

import pytest
import torch
from torch import nn

from vitlens.config import ConfigError
from vitlens.data.imageset import load_arrays
from vitlens.data.normalize import Normalizer
from vitlens.data.split import Split
from vitlens.model import vit as vit_model
from vitlens.model.layers import sincos_2d
from vitlens.model.trained import load_trained
from vitlens.model.vit import train_flops_per_image
from vitlens.pipeline import train as pipeline_train
from vitlens.train import loop, step
from vitlens.train.ema import EMA
from vitlens.train.plan import plan_run


def fit(params, cifar_npz, tmp_path):
    return loop.train(params, load_arrays(cifar_npz), checkpoint=tmp_path / "ckpt.pt")


def test_ema_averages_with_its_warm_started_decay():
    model = nn.Linear(2, 1)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5)
    expected = torch.zeros(1, 2)
    for n, value in enumerate([4.0, 8.0, 2.0, 6.0], start=1):
        model.weight.data.fill_(value)
        ema.update(model)
        d = min(0.5, (1 + n) / (10 + n))  # 0.18, 0.25, 0.31, 0.36: the warm start holds
        expected = d * expected + (1 - d) * value
        assert torch.allclose(ema.model.weight, expected), n
    assert ema.updates == 4 and not ema.model.training


def test_an_ema_run_trains_the_same_weights_and_validates_saves_their_average(
        tiny_params, cifar_npz, tmp_path):
    plain = fit(tiny_params(**{"train.epochs": 2}), cifar_npz, tmp_path / "plain")
    p = tiny_params(**{"train.epochs": 2, "train.ema": 0.9})
    averaged = fit(p, cifar_npz, tmp_path / "ema")
    ckpt = torch.load(tmp_path / "ema" / "ckpt.pt", weights_only=True)
    for k, w in plain.model.state_dict().items():  # the average never feeds back into training
        assert torch.equal(ckpt["model"][k], w), k
    assert ckpt["ema_updates"] == 2 * ((len(load_arrays(cifar_npz).y_train) - 40) // 32)  # 2 epochs of steps
    differ = [k for k, w in averaged.model.state_dict().items() if not torch.equal(w, ckpt["model"][k])]
    assert differ and all(torch.equal(averaged.model.state_dict()[k], v) for k, v in ckpt["ema"].items())
    s = loop.setup(p, plan_run(p, load_arrays(cifar_npz)))
    s.final.load_state_dict(ckpt["ema"])  # what validation reads when train.ema is on
    classes = load_arrays(cifar_npz).classes
    assert loop.validate(s, classes, p.evaluate.batch_size)[1] == averaged.history[-1]["val_acc"]


def test_the_stage_saves_the_average(tiny_params, cifar_npz, tmp_path, monkeypatch):
    results = []

    def keep(*args, **kw):
        results.append(loop.train(*args, **kw))
        return results[-1]
    monkeypatch.setattr(pipeline_train, "train", keep)
    saved = []
    for ema in (0.0, 0.9):
        p = tiny_params(**{"train.epochs": 1, "train.ema": ema, "tracking.enabled": False})
        out = tmp_path / f"ema-{ema}" / "model.pt"
        pipeline_train.run_training(p, cifar_npz, out, out.with_name("history.csv"),
                                    out.with_name("ckpt.pt"))
        saved.append(load_trained(out, "cpu").vit.state_dict())
    plain, averaged = saved
    assert all(torch.equal(averaged[k], v) for k, v in results[1].model.state_dict().items())
    assert not torch.equal(plain["head.weight"], averaged["head.weight"])


def test_label_smoothing_decays_linearly_to_zero_when_asked(tiny_params):
    on = tiny_params(**{"train.label_smoothing": 0.2, "train.label_smoothing_decay": True}).train
    off = tiny_params(**{"train.label_smoothing": 0.2}).train
    values = [step.smoothing_at(i, total=5, t=on) for i in range(5)]
    assert values == pytest.approx([0.2, 0.15, 0.1, 0.05, 0.0])
    assert {step.smoothing_at(i, total=5, t=off) for i in range(5)} == {0.2}


def test_the_training_loop_passes_each_steps_smoothing(tiny_params, cifar_npz, tmp_path, monkeypatch):
    seen = []
    real = loop.optimizer_step

    def spy(*args, label_smoothing, **kw):
        seen.append(label_smoothing)
        return real(*args, label_smoothing=label_smoothing, **kw)
    monkeypatch.setattr(loop, "optimizer_step", spy)
    p = tiny_params(**{"train.epochs": 2, "train.label_smoothing": 0.2,
                       "train.label_smoothing_decay": True})
    fit(p, cifar_npz, tmp_path)
    assert seen[0] == pytest.approx(0.2) and seen[-1] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(seen, seen[1:]))


def test_token_drop_decays_linearly_to_zero_by_epoch_when_asked(tiny_params):
    on = tiny_params(**{"train.epochs": 5, "train.token_drop_decay": True}).train
    off = tiny_params(**{"train.epochs": 5}).train
    values = [step.token_drop_at(e, token_drop=0.5, t=on) for e in range(1, 6)]
    assert values == pytest.approx([0.5, 0.375, 0.25, 0.125, 0.0])
    assert {step.token_drop_at(e, token_drop=0.5, t=off) for e in range(1, 6)} == {0.5}
    # A run's FLOPs count each epoch at the tokens it keeps: 0.5, 0.25, 0 of them dropped.
    p = tiny_params(**{"train.epochs": 3, "model.token_drop": 0.5, "train.token_drop_decay": True})
    per_image = [train_flops_per_image(dataclasses.replace(p.model, token_drop=d)) for d in (0.5, 0.25, 0.0)]
    assert loop.training_flops(p, 1000) == pytest.approx(sum(per_image) * loop.epoch_images(p, 1000))


def test_the_training_loop_keeps_each_epochs_share_of_tokens(tiny_params, cifar_npz, tmp_path, monkeypatch):
    """Epoch by epoch, training steps keep 32, then 48 of the 64 patch tokens, then all (no
    drop at all); validation reads every token throughout."""
    kept = []
    real = vit_model.keep_tokens

    def spy(x, keep):
        kept.append((len(training_epochs), keep))
        return real(x, keep)
    training_epochs: list[int] = []
    real_seed = loop.seed_epoch

    def seed_spy(seed, epoch, *args):
        training_epochs.append(epoch)
        return real_seed(seed, epoch, *args)
    monkeypatch.setattr(vit_model, "keep_tokens", spy)
    monkeypatch.setattr(loop, "seed_epoch", seed_spy)
    p = tiny_params(**{"train.epochs": 3, "model.token_drop": 0.5, "train.token_drop_decay": True})
    fit(p, cifar_npz, tmp_path)
    steps = len(kept) // 2
    assert steps >= 1 and kept == [(1, 32)] * steps + [(2, 48)] * steps


def test_sincos_positions_are_fixed_distinct_and_saved(tiny_params, cifar_npz, tmp_path):
    pe = sincos_2d(8, 32)
    assert pe.shape == (1, 65, 32) and torch.equal(pe[0, 0], torch.zeros(32))
    assert torch.cdist(pe[0, 1:], pe[0, 1:]).add(torch.eye(64)).min() > 0.1  # no two patches alike
    p = tiny_params(**{"train.epochs": 1, "model.pos_embed": "sincos", "tracking.enabled": False})
    out = tmp_path / "model.pt"
    pipeline_train.run_training(p, cifar_npz, out, tmp_path / "history.csv", tmp_path / "ckpt.pt")
    vit = load_trained(out, "cpu").vit
    assert "pos_embed" not in dict(vit.named_parameters())
    assert torch.equal(vit.pos_embed, sincos_2d(8, 32))  # trained, yet unchanged


def test_sincos_needs_a_width_divisible_by_four(tiny_params):
    with pytest.raises(ConfigError, match="divisible by 4 for model.pos_embed=sincos"):
        tiny_params(**{"model.pos_embed": "sincos", "model.dim": 30, "model.heads": 2})


def test_a_conv_stem_trains_saves_and_loads_back(tiny_params, cifar_npz, tmp_path):
    p = tiny_params(**{"train.epochs": 1, "model.stem": "conv", "tracking.enabled": False})
    out = tmp_path / "model.pt"
    pipeline_train.run_training(p, cifar_npz, out, tmp_path / "history.csv", tmp_path / "ckpt.pt")
    vit = load_trained(out, "cpu").vit
    assert isinstance(vit.patch_embed, torch.nn.Sequential) and len(vit.patch_embed) == 5
    # A model file written before model.stem existed holds a patch embedding.
    rec = torch.load(out, weights_only=True)
    rec["model_config"].pop("stem")
    rec["state_dict"] = {k: v for k, v in rec["state_dict"].items() if not k.startswith("patch_embed")}
    rec["state_dict"].update({"patch_embed.weight": torch.zeros(32, 3, 4, 4),
                              "patch_embed.bias": torch.zeros(32)})
    torch.save(rec, tmp_path / "old.pt")
    assert isinstance(load_trained(tmp_path / "old.pt", "cpu").vit.patch_embed, torch.nn.Conv2d)


def test_a_conv_stem_needs_a_power_of_two_patch(tiny_params):
    with pytest.raises(ConfigError, match="must be a power of 2 for model.stem=conv"):
        tiny_params(**{"model.stem": "conv", "model.patch_size": 1})


def test_cutout_blanks_one_square_of_each_training_image_to_the_mean(tiny_params):
    t = tiny_params(**{"train.cutout": 5, "train.crop_padding": 0, "train.flip": False}).train
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no pixel at the mean yet
    norm = Normalizer(mean=[0.0] * 3, std=[1.0] * 3)  # 0 after normalising = pixel value 0
    make = step.batch_maker(Split(x, torch.zeros(64, dtype=torch.long)), norm, t,
                            torch.Generator().manual_seed(0), classes=10)
    out, _ = make(torch.arange(64))
    blank = out == 0
    assert torch.equal(blank[:, :1].expand_as(blank), blank), "the square spans all channels"
    rows, cols = blank[:, 0].any(2), blank[:, 0].any(1)  # (B, H), (B, W)
    assert (rows.sum(1) == 5).all() and (cols.sum(1) == 5).all(), "one 5x5 square an image"
    assert (blank[:, 0].sum((1, 2)) == 25).all(), "a square, not a cross"
    kept = ~blank
    assert torch.equal(out[kept], norm(x)[kept]), "the rest of the image is untouched"
    assert len({tuple(r.nonzero()[0].tolist()) for r in rows}) > 1, "placed at random"
    off = step.batch_maker(Split(x, torch.zeros(64, dtype=torch.long)), norm,
                           tiny_params(**{"train.crop_padding": 0, "train.flip": False}).train,
                           torch.Generator().manual_seed(0), classes=10)
    assert torch.equal(off(torch.arange(64))[0], norm(x)), "0 = off"


def test_cutout_must_fit_the_image(tiny_params):
    with pytest.raises(ConfigError, match="train.cutout=33 must be <= model.image_size=32"):
        tiny_params(**{"train.cutout": 33})
