"""The CPU preset: the overrides `make repro-cpu` hands `dvc exp run`, in one place.

Everywhere it starts from the 0.81M-parameter model for 20 fp32 epochs (`FP32`), and that
run's time is the budget. The recipe spends the same budget better, for as many epochs as
`vitlens cpu-preset` (vitlens.cli.cpu_preset) measures to fit in it on this CPU: in bf16
where the CPU has it natively (`BF16_RECIPE`, 1.6x to 2.4x faster an epoch, by the CPU),
in fp32 elsewhere (`FP32_RECIPE`: dropped tokens make its epochs ~1.3x faster).
"""
from __future__ import annotations

import math
from typing import Any

from vitlens.config import Params, parse_params, set_key

FP32_EPOCHS = 20
# The model all presets share, sized for under 45 minutes of 20 fp32 epochs on 2 Zen 4 cores.
MODEL = {"model.dim": 128, "model.depth": 6, "model.heads": 4, "model.drop_path": 0.0,
         "train.batch_size": 128}
# AdamW pinned: this run's time is the budget, whatever params.yaml's optimizer.
FP32 = {**MODEL, "train.optimizer": "adamw", "train.precision": "fp32", "train.epochs": FP32_EPOCHS}
# Chosen on validation accuracy over two seeds in bf16, on a Zen 5 (docs/recipe.md) and again
# on a Xeon with AMX (docs/results.md): 2 heads of 64, a quarter of the patch tokens dropped in
# each step (faster steps, a regulariser), and a moving average of the weights. The head stays
# on the CLS token: on the mean of the patch tokens it reached the same validation accuracy
# in the same time, with less faithful maps (docs/results.md). Muon for the blocks' matrices:
# its epochs cost ~15% more, and in the 31 that fit on a Xeon it validated 79.4% and 80.1%
# (two seeds) against AdamW's 78.1% in its 38. Muon overfits (92% train accuracy), so
# TrivialAugment on the batch: val 80.7% and 80.0% on the same seeds (test 80.7%, 80.4%), a
# mean of 80.4% against MixUp/CutMix's 80.25%, for 2% more a step (docs/results.md).
BF16_RECIPE = {**MODEL, "model.heads": 2, "model.token_drop": 0.25, "train.ema": 0.999,
               "train.optimizer": "muon", "train.trivial_augment": True,
               "train.precision": "bf16"}
# Without native bf16 about 23 recipe epochs fit; at epoch 23 of those 31 TrivialAugment had
# not caught up with Muon alone (val 79.9% against 80.1%, two seeds): it pays in the last
# epochs, so fp32 goes without it.
FP32_RECIPE = {**BF16_RECIPE, "train.trivial_augment": False, "train.precision": "fp32"}
MIN_EPOCHS = FP32_EPOCHS  # below it, the recipe would give up epochs of the fp32 preset
# Of the budget the fitted epochs may fill: on a 2-core Xeon the estimate of an fp32 epoch
# ranged 70-92 s over calls (72-76 s measured), and a 40-epoch run's last epochs ran 1.3-1.7x
# slower than its first, with nothing else running.
MARGIN = 0.9


def recipe(bf16: bool) -> dict[str, Any]:
    """The recipe for a CPU with native bf16 or without it, its epochs left to fit_epochs."""
    return dict(BF16_RECIPE if bf16 else FP32_RECIPE)


def overrides(recipe_epochs: int | None, *, bf16: bool = True) -> dict[str, Any]:
    """The preset's overrides: FP32, or recipe(bf16) for `recipe_epochs`."""
    if recipe_epochs is None:
        return dict(FP32)
    assert recipe_epochs >= MIN_EPOCHS, f"the recipe needs >= {MIN_EPOCHS} epochs, got {recipe_epochs}"
    return {**recipe(bf16), "train.epochs": recipe_epochs}


def fit_epochs(fp32_epoch_s: float, recipe_epoch_s: float) -> int | None:
    """Epochs of the recipe that fit in MARGIN of the fp32 preset's FP32_EPOCHS, from one
    epoch's seconds of each; None when fewer than MIN_EPOCHS fit (keep FP32)."""
    assert fp32_epoch_s > 0 and recipe_epoch_s > 0, "epoch times must be positive"
    epochs = math.floor(FP32_EPOCHS * MARGIN * fp32_epoch_s / recipe_epoch_s)
    return epochs if epochs >= MIN_EPOCHS else None


def apply(params: Params, keys: dict[str, Any]) -> Params:
    """`params` with `keys` ("section.name": value) set, validated."""
    raw = params.to_dict()
    for key, value in keys.items():
        set_key(raw, key, value)
    return parse_params(raw)

