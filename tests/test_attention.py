"""Attention rollout, CLS maps, upsampling alignment and mean attention distance."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from vitlens.explain.attention import (
    attention_rollout,
    head_maps,
    mean_attention_distance,
    patch_distances,
    rollout_map,
    upsample_map,
)
from vitlens.explain.maps import compute_maps, mean_attention_distance_over
from vitlens.model.vit import ViT


def random_attns(layers: int, batch: int, heads: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, heads, n, n, generator=gen).mul(3).softmax(dim=-1)
        for _ in range(layers)
    ]


def as_attn(matrix: list[list[float]]) -> torch.Tensor:
    return torch.tensor(matrix, dtype=torch.float64)[None, None]  # (1, 1, N, N)


def identity_attns(layers: int, batch: int, heads: int, n: int) -> list[torch.Tensor]:
    return [torch.eye(n).expand(batch, heads, n, n).clone() for _ in range(layers)]


def test_rollout_rows_are_distributions():
    attns = random_attns(layers=6, batch=3, heads=4, n=17)
    rollout = attention_rollout(attns)
    assert rollout.shape == (3, 17, 17)
    assert (rollout >= 0).all()
    torch.testing.assert_close(rollout.sum(dim=-1), torch.ones(3, 17))


def test_rollout_two_layers_by_hand():
    a1 = [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]
    a2 = [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    # 0.5 * A + 0.5 * I, worked out by hand; rows already sum to 1. A1' is not
    # column-stochastic (column sums 1, 1.25, 0.75), so normalising the wrong axis shows.
    a1_res = np.array([[0.75, 0.25, 0.0], [0.0, 1.0, 0.0], [0.25, 0.0, 0.75]])
    a2_res = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
    expected = a2_res @ a1_res
    by_hand = np.array([[0.375, 0.625, 0.0], [0.125, 0.5, 0.375], [0.5, 0.125, 0.375]])
    np.testing.assert_allclose(expected, by_hand)
    assert not np.allclose(a1_res @ a2_res, by_hand)  # the order is observable

    rollout = attention_rollout([as_attn(a1), as_attn(a2)])
    np.testing.assert_allclose(rollout[0].numpy(), by_hand)


def test_rollout_normalises_rows_not_columns():
    a = [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 2.0]]
    # 0.5 * A + 0.5 * I = [[1, .5, 0], [0, .5, 0], [0, 1, 1.5]], then each row / its sum.
    by_hand = np.array([[2 / 3, 1 / 3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.4, 0.6]])
    np.testing.assert_allclose(attention_rollout([as_attn(a)])[0].numpy(), by_hand)


def test_rollout_averages_heads():
    heads = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])[None]
    # Mean of the heads is uniform 0.5; 0.5 * that + 0.5 * I = [[.75, .25], [.25, .75]].
    expected = torch.tensor([[[0.75, 0.25], [0.25, 0.75]]])
    torch.testing.assert_close(attention_rollout([heads]), expected)


def test_identity_attention_rolls_out_to_identity_and_an_empty_cls_map():
    grid = 3
    n = 1 + grid * grid
    attns = identity_attns(layers=4, batch=2, heads=3, n=n)
    torch.testing.assert_close(attention_rollout(attns), torch.eye(n).expand(2, n, n))
    cls_map = rollout_map(attns, grid)
    assert cls_map.shape == (2, grid, grid)
    assert not cls_map.isnan().any()
    assert (cls_map == 0).all()


def test_rollout_map_peaks_where_cls_always_looks():
    grid, row, col = 4, 2, 1
    n = 1 + grid * grid
    target = 1 + row * grid + col
    attns = random_attns(layers=5, batch=2, heads=3, n=n, seed=1)
    for attn in attns:
        attn[:, :, 0] = 0.0
        attn[:, :, 0, target] = 1.0
    cls_map = rollout_map(attns, grid)
    assert cls_map.shape == (2, grid, grid)
    torch.testing.assert_close(cls_map.sum(dim=(-2, -1)), torch.ones(2))
    for b in range(2):
        flat = cls_map[b].flatten().argmax().item()
        assert divmod(flat, grid) == (row, col)


def test_head_maps_pick_the_cls_row_per_head():
    batch, heads, grid = 2, 3, 4
    n = 1 + grid * grid
    attn = torch.arange(batch * heads * n * n, dtype=torch.float32).reshape(batch, heads, n, n)
    maps = head_maps(attn, grid)
    assert maps.shape == (batch, heads, grid, grid)
    for b, h, r, c in itertools.product(range(batch), range(heads), range(grid), range(grid)):
        assert maps[b, h, r, c] == attn[b, h, 0, 1 + r * grid + c]


def test_head_maps_of_the_patch_mean_average_the_patch_rows():
    batch, heads, grid = 2, 3, 4
    n = 1 + grid * grid
    attn = torch.rand(batch, heads, n, n).softmax(dim=-1)
    maps = head_maps(attn, grid, pool="mean")
    expected = attn[:, :, 1:, 1:].mean(dim=2).reshape(batch, heads, grid, grid)
    torch.testing.assert_close(maps, expected)
    assert not torch.allclose(maps, head_maps(attn, grid))
    with pytest.raises(ValueError, match="pool"):
        head_maps(attn, grid, pool="max")


def test_rollout_map_of_the_patch_mean_peaks_where_the_patches_look():
    """Every patch query but one looks at one patch; CLS looks at the other, which looks at
    itself: the mean readout's map peaks at the first, the CLS readout's at the second."""
    grid, n = 4, 17
    patches_look, cls_looks = 1 + 2 * grid + 1, 1 + 3
    attns = random_attns(layers=4, batch=2, heads=2, n=n, seed=2)
    for attn in attns:
        attn.mul_(0.1)
        attn[:, :, 1:, patches_look] += 0.9
        attn[:, :, cls_looks, patches_look] -= 0.9
        attn[:, :, [0, cls_looks], cls_looks] += 0.9
    mean_map, cls_map = rollout_map(attns, grid, pool="mean"), rollout_map(attns, grid)
    torch.testing.assert_close(mean_map.sum(dim=(-2, -1)), torch.ones(2))
    assert (mean_map.flatten(1).argmax(1) == patches_look - 1).all()
    assert (cls_map.flatten(1).argmax(1) == cls_looks - 1).all()


def test_head_maps_reject_a_wrong_grid():
    with pytest.raises(ValueError):
        head_maps(torch.rand(1, 2, 17, 17), grid=3)


@pytest.mark.parametrize(("row", "col"), [(0, 0), (3, 5), (7, 7)])
def test_upsample_lights_exactly_the_patch_pixels(row, col):
    grid, size, ps = 8, 32, 4
    patch_map = torch.zeros(2, grid, grid)
    patch_map[1, row, col] = 1.0
    image = upsample_map(patch_map, size)
    assert image.shape == (2, size, size)
    expected = torch.zeros(size, size)
    expected[ps * row : ps * row + ps, ps * col : ps * col + ps] = 1.0
    torch.testing.assert_close(image[1], expected)
    assert (image[0] == 0).all()


def test_upsample_keeps_head_dims_and_values():
    maps = torch.rand(2, 3, 8, 8)
    image = upsample_map(maps, 32)
    assert image.shape == (2, 3, 32, 32)
    torch.testing.assert_close(image[..., ::4, ::4], maps)
    torch.testing.assert_close(image[..., 3::4, 3::4], maps)


def test_upsample_rejects_a_size_the_grid_cannot_tile():
    with pytest.raises(ValueError):
        upsample_map(torch.rand(1, 8, 8), 30)


def test_patch_distances_between_centres():
    grid, ps = 3, 4
    dist = patch_distances(grid, ps)
    assert dist.shape == (9, 9)
    for (i, (r1, c1)), (j, (r2, c2)) in itertools.product(
        enumerate(itertools.product(range(grid), repeat=2)), repeat=2
    ):
        assert dist[i, j].item() == pytest.approx(ps * math.hypot(r1 - r2, c1 - c2))


def patch_only_attention(patch_rows: torch.Tensor, cls_share: float = 0.3) -> torch.Tensor:
    """Full (B, heads, N, N) attention with patch rows scaled by 1 - cls_share plus CLS mass."""
    b, heads, p, _ = patch_rows.shape
    attn = torch.zeros(b, heads, p + 1, p + 1, dtype=patch_rows.dtype)
    attn[:, :, 0] = 1.0 / (p + 1)
    attn[:, :, 1:, 0] = cls_share
    attn[:, :, 1:, 1:] = (1 - cls_share) * patch_rows
    return attn


def brute_force_uniform_distance(grid: int, ps: int) -> float:
    cells = list(itertools.product(range(grid), repeat=2))
    pairs = itertools.product(cells, cells)
    total = sum(ps * math.hypot(r1 - r2, c1 - c2) for (r1, c1), (r2, c2) in pairs)
    return total / len(cells) ** 2


def brute_force_farthest(grid: int) -> list[int]:
    cells = list(itertools.product(range(grid), repeat=2))
    return [
        max(range(len(cells)), key=lambda k: math.hypot(r - cells[k][0], c - cells[k][1]))
        for r, c in cells
    ]


def test_mean_distance_of_self_attention_is_zero():
    grid, p = 4, 16
    attns = [patch_only_attention(torch.eye(p).expand(2, 3, p, p)) for _ in range(2)]
    mad = mean_attention_distance(attns, grid, patch_size=4)
    assert mad.shape == (2, 3)
    torch.testing.assert_close(mad, torch.zeros(2, 3))


@pytest.mark.parametrize("grid", [2, 4, 8])
def test_mean_distance_of_uniform_attention_matches_brute_force(grid):
    ps, n = 4, 1 + grid * grid
    # Uniform over all tokens, CLS included: dropping CLS and renormalising leaves uniform.
    attns = [torch.full((2, 2, n, n), 1.0 / n, dtype=torch.float64)]
    mad = mean_attention_distance(attns, grid, ps)
    expected = brute_force_uniform_distance(grid, ps)
    torch.testing.assert_close(mad, torch.full((1, 2), expected, dtype=torch.float64))


def test_mean_distance_of_farthest_attention_is_the_maximum():
    grid, ps = 5, 4
    p = grid * grid
    farthest = brute_force_farthest(grid)
    rows = torch.zeros(1, 1, p, p)
    rows[0, 0, torch.arange(p), torch.tensor(farthest)] = 1.0
    mad = mean_attention_distance([patch_only_attention(rows)], grid, ps)
    cells = list(itertools.product(range(grid), repeat=2))
    expected = sum(
        ps * math.hypot(r - cells[k][0], c - cells[k][1]) for (r, c), k in zip(cells, farthest)
    ) / p
    assert mad.item() == pytest.approx(expected, rel=1e-6)
    random_rows = random_attns(layers=1, batch=4, heads=2, n=p + 1, seed=2)
    assert (mean_attention_distance(random_rows, grid, ps) < mad.item()).all()


def test_mean_distance_is_per_layer_and_head_and_averaged_over_the_batch():
    grid, ps, p = 3, 4, 9
    uniform = torch.full((p, p), 1.0 / p)
    eye = torch.eye(p)
    # Layer 0: head 0 local, head 1 global. Layer 1: image 0 local, image 1 global.
    layer0 = torch.stack([eye, uniform])[None].expand(2, 2, p, p)
    layer1 = torch.stack([torch.stack([eye, eye]), torch.stack([uniform, uniform])])
    attns = [patch_only_attention(layer0), patch_only_attention(layer1)]
    mad = mean_attention_distance(attns, grid, ps)
    u = brute_force_uniform_distance(grid, ps)
    expected = torch.tensor([[0.0, u], [u / 2, u / 2]])
    torch.testing.assert_close(mad, expected)


def tiny_vit() -> ViT:
    torch.manual_seed(0)
    return ViT(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=4,
               mlp_ratio=2.0).eval()


def test_rollout_and_head_maps_hold_the_cls_mass_on_patches():
    """Rollout maps sum to 1 over the image's patches; each head's map sums to what CLS puts
    on the patches, 1 minus its attention to itself (per-head maps are not renormalised)."""
    model, x = tiny_vit(), torch.randn(3, 3, 32, 32)
    m = compute_maps(model, x, grad=False)
    logits, rollout, heads = m.logits, upsample_map(m.rollout, 32), upsample_map(m.heads, 32)
    ps2 = model.patch_size ** 2  # a patch's value repeats over its ps x ps pixels
    assert logits.shape == (3, 10) and heads.shape == (3, 4, 32, 32)
    assert torch.allclose(rollout.sum(dim=(-2, -1)) / ps2, torch.ones(3), atol=1e-5)
    with torch.no_grad():
        cls_self = model(x, return_attn=True)[1][-1][:, :, 0, 0]  # (B, heads)
    assert torch.allclose(heads.sum(dim=(-2, -1)) / ps2, 1 - cls_self, atol=1e-5)
    assert (cls_self < 0.9).all()  # so the check above tells the two sums apart


def test_mean_attention_distance_over_weights_batches_by_size():
    model, x = tiny_vit(), torch.randn(5, 3, 32, 32)
    whole = mean_attention_distance_over(model, [x])
    uneven = mean_attention_distance_over(model, [x[:4], x[4:]])
    assert torch.allclose(uneven, whole, atol=1e-5)
    unweighted = (mean_attention_distance_over(model, [x[:4]])
                  + mean_attention_distance_over(model, [x[4:]])) / 2
    assert not torch.allclose(unweighted, whole, atol=1e-5)  # the test can tell them apart
