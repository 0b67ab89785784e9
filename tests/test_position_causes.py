"""The position-bias cause harness (benchmarks/position_causes.py): every candidate is one
valid change to the CPU recipe, and its epoch hook scores every map."""
from __future__ import annotations

import torch

from benchmarks.position_causes import CANDIDATES, METHODS, BiasEachEpoch
from vitlens.config import parse_params
from vitlens.data.normalize import Normalizer
from vitlens.model.vit import ViT
from vitlens.train import preset


def test_each_candidate_changes_one_thing_of_the_recipe(params_dict):
    recipe = preset.apply(parse_params(params_dict), preset.BF16_RECIPE).flat()
    assert CANDIDATES["baseline"] == {}
    for name, keys in CANDIDATES.items():
        changed = preset.apply(parse_params(params_dict), {**preset.BF16_RECIPE, **keys}).flat()
        diff = {k for k in recipe if recipe[k] != changed[k]}
        assert diff == set(keys), (name, diff)


def test_the_hook_scores_every_map_each_epoch():
    torch.manual_seed(0)
    model = ViT(image_size=16, patch_size=4, num_classes=3, dim=16, depth=2, heads=2, mlp_ratio=2.0)
    hook = BiasEachEpoch(torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8), batch_size=4)
    model.train()
    hook.after_epoch(1, model, Normalizer([0.5] * 3, [0.25] * 3))
    assert model.training, "the hook gives the model back in the mode it found it"
    (row,) = hook.rows
    assert row["epoch"] == 1 and set(row) == {"epoch", *METHODS}
    for m in METHODS:
        assert 0 <= row[m]["bias"] <= 1 and 0 <= row[m]["bottom_row"] <= 1, m
