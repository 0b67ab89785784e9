"""The CPU preset: its overrides, the epochs the recipe gets, and `vitlens cpu-preset`."""
import subprocess
import sys

import pytest
import yaml

from conftest import PROJECT_ROOT
from vitlens.cli import cpu_preset
from vitlens.config import exp_run_flags, parse_params, set_key
from vitlens.model.vit import train_flops_per_image
from vitlens.train import preset

BF16_HEADS = preset.BF16_RECIPE["model.heads"]


def test_the_recipe_fills_the_fp32_presets_time_and_no_more():
    # 20 fp32 epochs of 100 s = 2,000 s; 90% of it holds 45 epochs of 40 s (1,800 s).
    assert preset.fit_epochs(100.0, 40.0) == 45
    assert preset.fit_epochs(100.0, 40.0) * 40.0 <= preset.MARGIN * 20 * 100.0
    assert (preset.fit_epochs(100.0, 40.0) + 1) * 40.0 > preset.MARGIN * 20 * 100.0
    assert preset.fit_epochs(100.0, 100.0) is None  # no faster: keep the fp32 preset
    with pytest.raises(AssertionError, match="positive"):
        preset.fit_epochs(100.0, 0.0)


def test_every_preset_is_valid_params_and_the_recipe_is_wider_and_in_bf16(params_dict):
    real = parse_params(params_dict)
    fp32 = preset.apply(real, preset.overrides(None))
    bf16 = preset.apply(real, preset.overrides(47))
    assert (fp32.train.precision, fp32.train.epochs, fp32.model.dim) == ("fp32", 20, 128)
    assert (bf16.train.precision, bf16.train.epochs, bf16.model.heads) == ("bf16", 47, BF16_HEADS)
    # The budget is AdamW's fp32 run whatever params.yaml says; the recipe trains with Muon.
    muon = parse_params({**params_dict, "train": {**params_dict["train"], "optimizer": "muon"}})
    assert preset.apply(muon, preset.overrides(None)).train.optimizer == "adamw"
    assert (bf16.train.optimizer, bf16.train.trivial_augment) == ("muon", True)
    # Token drop: each training image costs fewer FLOPs than the fp32 preset's.
    assert train_flops_per_image(bf16.model) < train_flops_per_image(fp32.model)
    with pytest.raises(AssertionError, match="needs >= 20 epochs"):
        preset.overrides(12)


def test_without_native_bf16_the_recipe_is_the_same_in_fp32_without_trivial_augment(params_dict):
    real = parse_params(params_dict)
    bf16 = preset.apply(real, preset.overrides(31)).flat()
    fp32 = preset.apply(real, preset.overrides(23, bf16=False)).flat()
    differ = {k: (bf16[k], fp32[k]) for k in bf16 if bf16[k] != fp32[k]}
    assert differ == {"train.precision": ("bf16", "fp32"), "train.epochs": (31, 23),
                      "train.trivial_augment": (True, False)}


def test_flags_are_what_dvc_exp_run_takes(params_dict):
    flags = exp_run_flags(preset.overrides(33)).split()
    assert flags[::2] == ["-S"] * len(preset.overrides(33))
    for kv in flags[1::2]:  # as `-S` reads them: YAML values
        key, value = kv.split("=")
        set_key(params_dict, key, yaml.safe_load(value))
    p = parse_params(params_dict)
    assert (p.train.epochs, p.train.precision, p.model.heads) == (33, "bf16", BF16_HEADS)


@pytest.mark.parametrize("flags", [["avx512_bf16"], []])
@pytest.mark.parametrize("fp32_s,recipe_s,epochs", [(100.0, 40.0, 45), (100.0, 99.0, None)])
def test_the_recipe_in_this_cpus_precision_gets_the_epochs_that_fit(params_dict, monkeypatch,
                                                                   flags, fp32_s, recipe_s, epochs):
    monkeypatch.setattr(cpu_preset, "native_bf16_cpu", lambda: flags)
    seen = {}

    def timed(fp32, recipe, **_):
        seen.update(fp32=fp32.train.precision, recipe=recipe.train.precision,
                    heads=recipe.model.heads)
        return {"fp32": {"epoch_s": fp32_s}, "recipe": {"epoch_s": recipe_s}}
    monkeypatch.setattr(cpu_preset, "epoch_seconds", timed)
    keys, why = cpu_preset.choose(parse_params(params_dict), steps=2, rounds=1)
    precision = "bf16" if flags else "fp32"
    assert seen == {"fp32": "fp32", "recipe": precision, "heads": BF16_HEADS}
    assert keys == (preset.FP32 if epochs is None else preset.overrides(epochs, bf16=bool(flags)))
    assert (f"{epochs} {precision} recipe epochs fit" if epochs else "fp32 it is") in why
    assert ("no native bf16" in why) == (not flags)


def test_an_epoch_is_its_steps_and_its_validation_passes(tiny_params):
    small = tiny_params(**{"train.batch_size": 16, "data.val_size": 40, "evaluate.batch_size": 20})
    big = tiny_params(**{"train.batch_size": 16, "data.val_size": 40, "model.dim": 64,
                         "model.depth": 4, "evaluate.batch_size": 20})
    t = cpu_preset.epoch_seconds(small, big, steps=2, rounds=2)
    for name in ("fp32", "recipe"):
        r = t[name]
        steps = (50_000 - 40) // 16
        assert r["epoch_s"] == pytest.approx(steps * r["step_s"] + 2 * r["validation_pass_s"])
    assert t["recipe"]["step_s"] > 0 and t["step_speedup_recipe"] > 0


def test_vitlens_cpu_preset_prints_the_flags():
    out = subprocess.run([sys.executable, "-m", "vitlens", "cpu-preset", "--steps", "1",
                          "--rounds", "1"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("cpu-preset: ")
    fallback = "fp32 it is" in out.stderr
    keys = preset.FP32 if fallback else preset.recipe("no native bf16" not in out.stderr)
    flags = out.stdout.split()
    assert all(f"{k}={v}" in flags for k, v in keys.items() if k != "train.epochs"), out.stdout


def test_make_repro_cpu_runs_dvc_with_the_printed_flags():
    dry = subprocess.run(["make", "-n", "repro-cpu", "EXTRA=-S train.seed=1"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert "dvc exp run $(vitlens cpu-preset) -S train.seed=1" in dry.stdout, dry.stdout
