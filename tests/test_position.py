"""Position bias: a map fixed at one place scores 1, the planted evidence's oracle (which moves
with the picture) and noise score 0, a model that sees only positions scores 1 on every map,
and the score grows with the share of a fixed place in a map."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import to_rgba

from test_faithfulness import CLASSES, EVIDENCE, GRID, PATCH, SIZE, evidence_images
from vitlens.explain.maps import explanation_maps
from vitlens.explain.position import (
    PositionBias,
    concentration,
    excess_positions,
    mass,
    position_bias,
    position_biases,
    position_views,
    staying,
    top_onehot,
    top_share,
    view_maps,
)
from vitlens.model.vit import ViT
from vitlens.plots.common import WRONG
from vitlens.plots.faithfulness import methods_figure

FIXED = 3 * GRID + 1  # row 3 (the bottom row), column 1
METHODS = ["rollout", "grad_rollout", "last_layer", "random"]


def fixed_map(x: torch.Tensor) -> torch.Tensor:
    """(N, g, g) one-hot at FIXED whatever the image: a map bound to a place."""
    return F.one_hot(torch.full((len(x),), FIXED), GRID * GRID).float().view(-1, GRID, GRID)


def oracle_map(x: torch.Tensor) -> torch.Tensor:
    """(N, g, g) each patch's mean squared value, summing to 1: the planted checkerboard (+-3)
    outweighs the noise (about 1), so its top patch is the evidence patch, wherever the
    picture puts it; a flat image gives a flat map."""
    e = F.avg_pool2d(x.pow(2).mean(dim=1, keepdim=True), PATCH)[:, 0]
    return e / e.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def score(map_fn, x: torch.Tensor) -> PositionBias:
    return position_bias(map_fn(x), {v: map_fn(xv) for v, xv in position_views(x).items()})


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    return evidence_images(64, torch.Generator().manual_seed(1))


def tiny_vit(**kw) -> ViT:
    torch.manual_seed(0)
    return ViT(image_size=SIZE, patch_size=PATCH, num_classes=CLASSES, dim=32, depth=2, heads=2,
               mlp_ratio=2.0, **kw).eval()


def test_a_map_fixed_at_one_patch_scores_one(images):
    p = score(fixed_map, images[0])
    assert p.score > 0.99 and min(p.flip, p.top, p.blank) > 0.99
    assert p.concentration == pytest.approx(1.0)
    assert excess_positions(p.share, 3) == [{"row": 3, "col": 1, "share": 1.0, "excess": 15 / 16}]


def test_the_planted_evidence_oracle_moves_with_the_picture_and_scores_zero(images):
    x, y = images
    # The oracle of test_faithfulness (the label's evidence patch), read from the picture.
    assert (oracle_map(x).flatten(1).argmax(dim=1) == EVIDENCE[y]).all()
    views = {v: oracle_map(xv) for v, xv in position_views(x).items()}
    # Every top patch moved to the mirrored place: the flipped maps flipped back are the maps.
    assert (views["vertical"].flip(-2).flatten(1).argmax(1) == oracle_map(x).flatten(1).argmax(1)).all()
    p = position_bias(oracle_map(x), views)
    assert 0 <= p.score < 0.01 and p.top == p.blank == 0 and p.flip < 1e-6
    # Its top patches crowd into the four corners, yet that is content, not position.
    assert p.concentration == pytest.approx(0.8, abs=0.05)


def test_noise_scores_low(images):
    x = images[0]
    maps = explanation_maps(tiny_vit(), x, ["random"], seed=0, batch_size=32)["random"]
    views = {v: m["random"] for v, m in view_maps(tiny_vit(), x, ["random"], seed=0,
                                                      batch_size=32).items()}
    p = position_bias(maps, views)
    assert 0 <= p.score < 0.05 and p.concentration < 0.3


def test_a_vit_that_sees_only_positions_scores_one_on_every_map(images):
    """The patch embedding zeroed: every token is its position, every map a fixed place."""
    x = images[0]
    model = tiny_vit()
    with torch.no_grad():
        model.patch_embed.weight.zero_()
        model.patch_embed.bias.zero_()
    maps = explanation_maps(model, x, METHODS, seed=0, batch_size=24)
    scores = position_biases(maps, view_maps(model, x, METHODS, seed=0, batch_size=24))
    assert list(scores) == METHODS
    for m in ("rollout", "grad_rollout", "last_layer"):
        assert scores[m].score > 0.99, (m, scores[m])
    assert scores["random"].score < 0.05


def test_the_score_grows_with_the_share_of_a_fixed_place(images):
    x = images[0]
    weights = [0.0, 0.1, 0.25, 0.4, 0.5, 0.75, 1.0]
    got = [score(lambda t, w=w: w * fixed_map(t) + (1 - w) * oracle_map(t), x).score for w in weights]
    assert got[0] < 0.01 and got[-1] > 0.99
    # Rising until the fixed place is every image's top patch, then 1 (the top test saturates).
    assert all(a < b or a == b == 1 for a, b in zip(got, got[1:])) and got[1] < 0.5, got


def test_a_partial_habit_counts_though_content_wins_on_every_image():
    """The CPU preset's rollout: on each image the content patch is brightest, yet a row's
    excess stays under the flip on every image. The score reads the share that stays."""
    g, n = 8, 400
    gen = torch.Generator().manual_seed(0)
    content = torch.randint(0, g * g, (n,), generator=gen)
    maps = 0.01 * torch.rand(n, g, g, generator=gen)
    maps.view(n, -1)[torch.arange(n), content] += 1.0  # the picture's patch: the top patch
    maps[:, -1] += 0.3  # the bottom row, whatever the picture
    flipped = 0.01 * torch.rand(n, g, g, generator=gen)
    flipped.view(n, -1)[torch.arange(n), content] += 1.0
    flipped = flipped.flip(-2)  # the content moved with the flip ...
    flipped[:, -1] += 0.3  # ... and the bottom row stayed
    # Top patches follow the picture: nothing stays. Mass: the row's share of each map stays.
    assert staying(top_onehot(maps), top_onehot(flipped), -2) < 0.05
    row = 0.3 * g / (1 + 0.3 * g + 0.01 * g * g / 2)  # the bottom row's fixed share, mirror row none
    assert staying(mass(maps), mass(flipped), -2) == pytest.approx(row, abs=0.02)
    # Moving with the picture instead (the row flipped too): nothing stays.
    assert staying(mass(maps), mass(maps.flip(-2)), -2) < 0.01
    # Read along the other axis, a row is no column: a horizontal flip sees no excess.
    assert staying(mass(maps), mass(flipped.flip(-2).flip(-1)), -1) < 0.02


def test_flat_maps_carry_no_evidence_and_no_nan():
    flat = torch.full((5, GRID, GRID), 0.3)
    p = position_bias(flat, {"vertical": flat, "horizontal": flat, "blank": flat[:1]})
    assert (p.score, p.flip, p.top, p.blank, p.concentration) == (0, 0, 0, 0, 0)
    assert (p.share == 0).all() and excess_positions(p.share, 3) == []
    with pytest.raises(ValueError, match="views must be"):
        position_bias(flat, {"vertical": flat, "blank": flat[:1]})


def test_top_share_concentration_and_excess_positions():
    maps = torch.zeros(8, 2, 2)
    maps.view(8, 4)[torch.arange(8), torch.tensor([3, 3, 3, 3, 3, 1, 1, 0])] = 1.0
    share = top_share(maps)
    torch.testing.assert_close(share, torch.tensor([[1, 2], [0, 5]], dtype=torch.float64) / 8)
    assert concentration(share) == pytest.approx(0.5 * (1 / 8 + 0 + 1 / 4 + 3 / 8) / 0.75)
    assert excess_positions(share, 5) == [{"row": 1, "col": 1, "share": 5 / 8, "excess": 3 / 8}]
    assert excess_positions(share, 0) == []
    assert concentration(torch.full((4, 4), 1 / 16)) == pytest.approx(0.0)


def test_the_drawn_map_of_a_position_biased_method_is_flagged():
    images = np.random.default_rng(0).integers(0, 256, (1, 3, 16, 16), dtype=np.uint8)
    maps = {m: np.random.default_rng(1).random((1, 16, 16)) for m in ("rollout", "random")}
    scores = {m: np.array([[0.2, 0.6]]) for m in maps}
    fig = methods_figure(images, maps, ["cat"], scores, flags={"rollout": "position bias 0.91"})
    titles = {ax.get_title(): ax.title.get_color() for ax in fig.axes if ax.get_label() != "<colorbar>"}
    flagged = "attention rollout\ndel 0.20  ins 0.60\n\u26a0 position bias 0.91"
    assert to_rgba(titles[flagged]) == to_rgba(WRONG)
    assert to_rgba(titles["random (baseline)\ndel 0.20  ins 0.60"]) != to_rgba(WRONG)
