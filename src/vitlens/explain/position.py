"""Does a map show the picture or a place? The position bias of an explanation map.

A map that follows the picture moves when the picture moves; a map bound to a position stays
put. On the same images the faithfulness scores use, three tests, each in [0, 1], 0 for a map
that follows the picture and for noise, 1 for a map fixed at one place:

- top: where the top patches fall, and how much of that survives a flip. A vertical flip moves
  content from row r to row g-1-r and leaves the columns, so it is read on the rows' shares
  (a horizontal flip on the columns'). Per image, let a be the one-hot row of its top patch
  and b that of the flipped image's map as it comes (not flipped back), and anti(t) =
  (t - reverse(t)) / 2 the part of t a flip can tell apart from its mirror. Content gives
  anti(b) = -anti(a), a place gives anti(b) = anti(a), so (anti(a) + anti(b)) / 2 is the part
  that stayed put. `top` = the L1 norm of its mean over images, less what the L1 norm of a
  mean of pure noise of the same spread would reach (its expectation, sqrt(2/pi) times the
  sum of the entries' standard errors, plus two of its standard deviations), clamped at 0;
  the larger over the two flips. 1 for every top patch in one row that stays there, 0 when
  the rows' excess moves with the picture (centred objects, planted corners: content that
  sits in the same places across a data set is no bias).
- flip: the same on each map's whole mass (the map divided by its sum) instead of its top
  patch: how far the mean map's flip-visible shape is a place.
- blank: a content-free input, a flat image at the training mean (all zeros after
  normalisation), can only draw a map from positions. `blank` = the mean over images of the
  Pearson correlation of each map with that blank map (0 when the blank map is flat, as
  it is for a map that follows content), clamped at 0. It sees what flips cannot: a bias
  that is its own mirror image (a centre blob).

position_bias = max(top, flip, blank). Each test is blind somewhere (flips to a mirror-
symmetric bias, the blank image to a default the model drops on real pictures, the top patch
to the rest of the map), and each is corrected for noise, so a bias any of them sees counts.
Why over images and not per image: on real pictures the position part of a map is small
beside its content part on any one image, yet the same on every image; only the mean over
images separates the two (a per-image test called the CPU preset's rollout unbiased while
37% of its top patches sat in the bottom row).

Where the top patches fall (`top_share`, the (g, g) share of images whose top patch is each
patch) is recorded with its concentration (total variation from uniform, scaled to [0, 1]),
and the patches that draw the excess; it is not in the score on its own: concentration is
content as often as position.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vitlens.explain.maps import explanation_maps
from vitlens.model.vit import ViT

FLIPS = {"vertical": -2, "horizontal": -1}  # the dim of (..., H, W) and (..., g, g) each reverses
VIEWS = (*FLIPS, "blank")
_FLAT = 1e-9  # a part under this share of its map's largest value is flat (float noise)


def position_views(x: Tensor) -> dict[str, Tensor]:
    """The inputs the tests need besides normalised images x (N, C, H, W): each flip (N, C, H, W)
    and one content-free image, blank (1, C, H, W): zeros, the training mean."""
    return {**{name: x.flip(dim) for name, dim in FLIPS.items()}, "blank": torch.zeros_like(x[:1])}


def view_maps(model: ViT, x: Tensor, methods: Sequence[str], *, seed: int,
              batch_size: int) -> dict[str, dict[str, Tensor]]:
    """{view: {method: (n, g, g)}} for every position view of x, batched like the maps of x.
    Each view draws the random map from its own seed (seed + 1, + 2, ...): noise is fresh on
    every call; one seed would give each flipped image its original's noise, and the blank
    image the first image's."""
    return {view: explanation_maps(model, xv, methods, seed=seed + i + 1, batch_size=batch_size)
            for i, (view, xv) in enumerate(position_views(x).items())}


def _cosine(u: Tensor, v: Tensor, ref_u: Tensor, ref_v: Tensor) -> Tensor:
    """(N, P) x (N, P) -> (N,) cosine of rows in float64; 0 where either row is flat next to
    its map (ref_*, (N, P)): no direction, no evidence either way."""
    u, v = u.double(), v.double()
    nu, nv = u.norm(dim=1), v.norm(dim=1)
    ok = (nu > _FLAT * ref_u.double().abs().amax(dim=1)) & (nv > _FLAT * ref_v.double().abs().amax(dim=1))
    return torch.where(ok, (u * v).sum(dim=1) / (nu * nv).clamp_min(1e-300), 0.0)


def _top(m: Tensor) -> tuple[Tensor, Tensor]:
    """(N, g, g) -> the top patch's flat index (N,), and whether the map has one (N,) bool."""
    f = m.flatten(1)
    return f.argmax(dim=1), f.amax(dim=1) > f.amin(dim=1)


def top_onehot(m: Tensor) -> Tensor:
    """(N, g, g) -> (N, g, g) float64, 1 at each map's top patch; all zeros for a flat map."""
    top, has = _top(m)
    return F.one_hot(top, m[0].numel()).double().mul(has[:, None].double()).view(m.shape)


def mass(m: Tensor) -> Tensor:
    """(N, g, g) -> each map over its sum, float64; all zeros for a flat map (no shape)."""
    f = m.double()
    flat = ~_top(m)[1]
    return (f / f.sum(dim=(1, 2), keepdim=True).clamp_min(1e-300)).masked_fill(flat[:, None, None], 0.0)


def staying(a: Tensor, b: Tensor, dim: int) -> float:
    """Noise-corrected share of the flip-visible shape of the maps a (N, g, g) that stays put
    in b, the maps of the images flipped along `dim` as they come (module docstring)."""
    rows_a, rows_b = a.sum(dim=-1 if dim == -2 else -2), b.sum(dim=-1 if dim == -2 else -2)  # (N, g)
    stayed = (rows_a - rows_a.flip(-1) + rows_b - rows_b.flip(-1)) / 4  # (N, g)
    se = stayed.std(dim=0) / math.sqrt(len(a)) if len(a) > 1 else torch.zeros(stayed.shape[1:])  # (g,)
    # The L1 norm of a mean of pure noise with that spread: its mean plus two standard deviations.
    noise = math.sqrt(2 / math.pi) * float(se.sum()) + 2 * math.sqrt((1 - 2 / math.pi) * float(se.pow(2).sum()))
    return min(max(float(stayed.mean(dim=0).abs().sum()) - noise, 0.0), 1.0)


def blank_similarity(maps: Tensor, blank: Tensor) -> Tensor:
    """(N,) Pearson correlation of each map (N, g, g) with the blank image's map (1, g, g)."""
    a, z = _centred(maps), _centred(blank).expand(len(maps), -1)
    return _cosine(a, z, maps.flatten(1), blank.flatten(1).expand(len(maps), -1))


def _centred(m: Tensor) -> Tensor:
    """(N, g, g) -> (N, g*g) minus each map's mean."""
    f = m.flatten(1).double()
    return f - f.mean(dim=1, keepdim=True)


def top_share(maps: Tensor) -> Tensor:
    """(g, g) share of the maps (N, g, g) whose top patch is each patch; flat maps have none
    and are left out (all zeros if every map is flat)."""
    top, has = _top(maps)
    counts = torch.bincount(top[has], minlength=maps[0].numel()).double()
    return (counts / max(int(has.sum()), 1)).view(maps.shape[1:])


def concentration(share: Tensor) -> float:
    """Total variation of a (g, g) top-patch share from uniform, over its largest possible
    value 1 - 1/g**2: 0 spread evenly, 1 always the same patch (0 with no top patches)."""
    p, u = share.flatten().double(), 1 / share.numel()
    if p.sum() == 0:
        return 0.0
    return float(0.5 * (p - u).abs().sum() / (1 - u))


def excess_positions(share: Tensor, k: int) -> list[dict[str, Any]]:
    """The k patches (fewer if fewer exceed uniform) whose top-patch share most exceeds the
    uniform 1/g**2, largest excess first: {row, col, share, excess}, row 0 = the top row,
    col 0 = the left column."""
    g, u = share.shape[-1], 1 / share.numel()
    flat = share.flatten().double()
    order = (flat - u).argsort(descending=True, stable=True)[:k]
    return [{"row": int(i) // g, "col": int(i) % g, "share": float(flat[i]),
             "excess": float(flat[i] - u)} for i in order if flat[i] > u]


@dataclass
class PositionBias:
    score: float  # position_bias = max(top, flip, blank), in [0, 1]
    flip: float  # the mean map's flip-visible shape stays put under flips
    top: float  # the top patches' flip-visible excess stays put under flips
    blank: float  # the maps look like the content-free image's map
    concentration: float  # of the top patches over the grid; recorded, not scored
    share: Tensor  # (g, g) share of images whose top patch is each patch

    def row(self, k: int) -> dict[str, Any]:
        """The JSON row: scalars, the k excess positions and the (g, g) top-patch share."""
        return {"position_bias": self.score, "position_flip": self.flip, "position_top": self.top,
                "position_blank": self.blank, "top_concentration": self.concentration,
                "excess_positions": excess_positions(self.share, k),
                "top_patch_share": self.share.tolist()}


def position_bias(maps: Tensor, views: Mapping[str, Tensor]) -> PositionBias:
    """Position bias of one method's maps (N, g, g) of N images, given its maps of the same
    images' views (`view_maps`): vertical and horizontal (N, g, g) as they come, blank (1, g, g)."""
    if set(views) != set(VIEWS):
        raise ValueError(f"views must be {VIEWS}, got {sorted(views)}")
    for name in FLIPS:
        if views[name].shape != maps.shape:
            raise ValueError(f"{name} maps {tuple(views[name].shape)} must match {tuple(maps.shape)}")
    flip = max(staying(mass(maps), mass(views[n]), d) for n, d in FLIPS.items())
    top = max(staying(top_onehot(maps), top_onehot(views[n]), d) for n, d in FLIPS.items())
    blank = float(blank_similarity(maps, views["blank"]).mean().clamp(0, 1))
    share = top_share(maps)
    return PositionBias(score=max(flip, top, blank), flip=flip, top=top, blank=blank,
                        concentration=concentration(share), share=share)


def position_biases(maps: Mapping[str, Tensor],
                    views: Mapping[str, Mapping[str, Tensor]]) -> dict[str, PositionBias]:
    """{method: PositionBias} from {method: (N, g, g)} and `view_maps`'s {view: {method: maps}}."""
    return {m: position_bias(v, {view: views[view][m] for view in VIEWS}) for m, v in maps.items()}
