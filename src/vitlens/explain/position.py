"""Does a map show the picture or a place? The position bias of an explanation map.

A map that follows the picture moves when the picture moves; a map bound to a position stays
put. Three tests, on the same images the faithfulness scores use, each in [0, 1], each 0 for
a map that follows the picture and for noise, 1 for a map fixed at one place:

- flip: flip the input upside down and left-right. Per image and flip, the cosine between the
  original map's flip-antisymmetric part a - f(a) and that of the flipped image's map as it
  comes (not flipped back), b - f(b): +1 when the part of the map a flip can tell apart stays
  where it was (b = a), -1 when it moves with the picture (b = f(a)). Only that part counts,
  because a flip cannot tell a mirror-symmetric map (a centre blob) staying from moving.
  `flip` = the mean over images and both flips, clamped at 0.
- top: the same for the top patch alone, the one a reader's eye goes to: per image and flip,
  1 if the flipped image's top patch is where the original's was (kept), -1 if it is the
  mirrored place (followed), 0 otherwise or for a flat map. `top` = the mean, clamped at 0.
  Noise keeps and follows equally often (1 / g**2 each), so it scores 0, not chance.
- blank: a content-free input, a flat image at the training mean (all zeros after
  normalisation), can only draw a map from positions. `blank` = the mean over images of the
  Pearson correlation of each map with that blank map (0 when the blank map is flat, as
  it is for a map that follows content), clamped at 0. It sees what flips cannot: a bias
  that is its own mirror image.

position_bias = (flip + top + blank) / 3. Each test is blind somewhere (flips to symmetric
bias, the top patch to the rest of the map, the blank map to a default that differs on real
pictures), so the score is high only when they agree. Why the mean of clamped means: a map
whose flip-visible part is as much position as content scores 0 on flip; noise averages to 0
instead of a chance level; one score per map, comparable across maps and models.

Where the top patches fall (`top_share`, the (g, g) share of images whose top patch is each
patch) is recorded with its concentration (total variation from uniform, scaled to [0, 1]),
and the patches that draw the excess; it is not in the score: content that sits in the same
places across a data set (CIFAR's centred objects, the planted corners of the tests) makes
top patches concentrate without any position bias.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
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
    every call; one seed would give the same noise whatever the input, a fixed position."""
    return {view: explanation_maps(model, xv, methods, seed=seed + i + 1, batch_size=batch_size)
            for i, (view, xv) in enumerate(position_views(x).items())}


def _cosine(u: Tensor, v: Tensor, ref_u: Tensor, ref_v: Tensor) -> Tensor:
    """(N, P) x (N, P) -> (N,) cosine of rows in float64; 0 where either row is flat next to
    its map (ref_*, (N, P)): no direction, no evidence either way."""
    u, v = u.double(), v.double()
    nu, nv = u.norm(dim=1), v.norm(dim=1)
    ok = (nu > _FLAT * ref_u.double().abs().amax(dim=1)) & (nv > _FLAT * ref_v.double().abs().amax(dim=1))
    return torch.where(ok, (u * v).sum(dim=1) / (nu * nv).clamp_min(1e-300), 0.0)


def _centred(m: Tensor) -> Tensor:
    """(N, g, g) -> (N, g*g) minus each map's mean."""
    f = m.flatten(1).double()
    return f - f.mean(dim=1, keepdim=True)


def flip_agreement(maps: Tensor, flipped: Tensor, dim: int) -> Tensor:
    """(N,) in [-1, 1]: +1 the flip-antisymmetric part of `maps` (N, g, g) stayed put in
    `flipped`, the maps of the flipped images as they come; -1 it moved with the picture."""
    u = (maps - maps.flip(dim)).flatten(1)
    v = (flipped - flipped.flip(dim)).flatten(1)
    return _cosine(u, v, maps.flatten(1), flipped.flatten(1))


def _top(m: Tensor) -> tuple[Tensor, Tensor]:
    """(N, g, g) -> the top patch's flat index (N,), and whether the map has one (N,) bool."""
    f = m.flatten(1)
    return f.argmax(dim=1), f.amax(dim=1) > f.amin(dim=1)


def top_agreement(maps: Tensor, flipped: Tensor, dim: int) -> Tensor:
    """(N,) in {-1, 0, 1}: +1 the flipped image's top patch is where the original's was, -1
    it is at the mirrored place (the flipped image's map flipped back has it there)."""
    top, has = _top(maps)
    top_b, has_b = _top(flipped)
    top_back, _ = _top(flipped.flip(dim))
    ok = has & has_b
    return ((top_b == top) & ok).double() - ((top_back == top) & ok).double()


def blank_similarity(maps: Tensor, blank: Tensor) -> Tensor:
    """(N,) Pearson correlation of each map (N, g, g) with the blank image's map (1, g, g)."""
    a, z = _centred(maps), _centred(blank).expand(len(maps), -1)
    return _cosine(a, z, maps.flatten(1), blank.flatten(1).expand(len(maps), -1))


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
    score: float  # position_bias = (flip + top + blank) / 3, in [0, 1]
    flip: float  # the whole map stays put under flips
    top: float  # the top patch stays put under flips
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
    maps = maps.double()
    flip = torch.stack([flip_agreement(maps, views[n].double(), d) for n, d in FLIPS.items()])
    top = torch.stack([top_agreement(maps, views[n].double(), d) for n, d in FLIPS.items()])
    blank = blank_similarity(maps, views["blank"].double())
    f, t, b = (float(part.mean().clamp(0, 1)) for part in (flip, top, blank))
    share = top_share(maps)
    return PositionBias(score=(f + t + b) / 3, flip=f, top=t, blank=b,
                        concentration=concentration(share), share=share)


def position_biases(maps: Mapping[str, Tensor],
                    views: Mapping[str, Mapping[str, Tensor]]) -> dict[str, PositionBias]:
    """{method: PositionBias} from {method: (N, g, g)} and `view_maps`'s {view: {method: maps}}."""
    return {m: position_bias(v, {view: views[view][m] for view in VIEWS}) for m, v in maps.items()}
