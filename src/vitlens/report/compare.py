"""The compare page's document (`vitlens compare A B`): one explorer document per model, built
by vitlens.report.data from the same test images, and what relates them: the params that
differ, each image's agreement of the two rollouts (vitlens.explain.agreement), per class and
over all the class-mean images, and where it is lowest."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vitlens.data.choice import right_and_wrong
from vitlens.explain.agreement import agreement, common_grid, top_k
from vitlens.model.trained import Trained
from vitlens.report import data


@dataclass
class Side:
    """One model of a comparison: what the user named it by, the model, and its reports
    (metrics, faithfulness, distance: the JSON the evaluate, faithfulness and visualize stages
    wrote; None where missing)."""

    name: str
    trained: Trained
    reports: dict[str, Any]


def outcomes(pred_a: np.ndarray, pred_b: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per image: "both" (both right), "a" (A right only), "b" (B right only) or "neither"."""
    ra, rb = pred_a == truth, pred_b == truth
    return np.where(ra & rb, "both", np.where(ra, "a", np.where(rb, "b", "neither")))


def choose(pred_a: np.ndarray, pred_b: np.ndarray, truth: np.ndarray, n: int, classes: int | None
           ) -> np.ndarray:
    """Positions of `n` images among the predictions: the report's right-and-wrong choice
    (data.choice), with an image "wrong" when either model gets it wrong, so that half the
    slots show where the two disagree or both fail."""
    both_right = (pred_a == truth) & (pred_b == truth)
    return right_and_wrong(np.where(both_right, truth, -1), truth, n, classes=classes)


def agreement_of(a: np.ndarray, b: np.ndarray) -> dict[str, list[float]]:
    ag = agreement(a, b)
    return {k: [round(float(v), 6) for v in vals] for k, vals in ag.items()}


def per_class(ag: dict[str, list[float]], labels: list[int], k: int) -> dict[str, Any]:
    """The mean agreement of each class's images (None for a class without one)."""
    y = np.asarray(labels)
    out: dict[str, Any] = {"counts": [int((y == c).sum()) for c in range(k)]}
    for key, vals in ag.items():
        v = np.asarray(vals)
        out[key] = [round(float(v[y == c].mean()), 6) if (y == c).any() else None for c in range(k)]
    return out


def summary(ag: dict[str, list[float]], classes: dict[str, Any], gallery: dict[str, list[float]]
            ) -> dict[str, Any]:
    """What a user can quote: the mean agreement over all class-mean images, the class where
    it is lowest and the least alike image of the gallery."""
    rho = [r if r is not None else np.inf for r in classes["spearman"]]
    return {"images": len(ag["spearman"]), "spearman": float(np.mean(ag["spearman"])),
            "overlap": float(np.mean(ag["overlap"])), "lowest_class": int(np.argmin(rho)),
            "lowest_image": int(np.argmin(gallery["spearman"]))}


def side_document(s: Side, images: np.ndarray, labels: list[str], truth: list[int], *,
                  layers: list[int], heads: list[int], means: tuple[np.ndarray, list[int], np.ndarray],
                  batch_size: int, position_warn: float) -> dict[str, Any]:
    """The explorer document of one model (no training strip: the page compares the ends)."""
    t, r = s.trained, s.reports
    return data.document(
        t, title=s.name, kind="run",
        gallery=data.gallery(t, images, labels, [*truth], layers=layers, heads=heads, batch_size=batch_size),
        class_means=data.class_means(t, means[0], means[1], batch_size=batch_size, maps=means[2]),
        facts=data.facts(t, defaults=None, metrics=r.get("metrics"), faithfulness=r.get("faithfulness"),
                         distance=r.get("distance"), position_warn=position_warn))


Pair = tuple[np.ndarray, np.ndarray]  # one array per model: A's, B's


def document(a: Side, b: Side, images: np.ndarray, labels: list[str], truth: list[int], *, rollouts: Pair,
             means_images: np.ndarray, means_labels: list[int], means_rollouts: Pair,
             layers: tuple[list[int], list[int]], heads: tuple[list[int], list[int]], batch_size: int,
             position_warn: float) -> dict[str, Any]:
    """The whole compare document of gallery `images` (uint8 (n, 3, S, S)) and the class means
    over `means_images`, given both models' rollouts (n, g, g) of each (data.rollouts: the
    caller has them from the pass that chose the images); `layers` and `heads` (0-based) per
    model."""
    sides, roll, means = [a, b], rollouts, means_rollouts
    docs = [side_document(s, images, labels, truth, layers=layers[i], heads=heads[i],
                          means=(means_images, means_labels, means[i]), batch_size=batch_size,
                          position_warn=position_warn) for i, s in enumerate(sides)]
    # The second model's thumbnails are the first's: the page reads them from "a".
    docs[1]["images"]["src"] = []
    gallery = agreement_of(roll[0], roll[1])
    over_means = agreement_of(means[0], means[1])
    classes = per_class(over_means, means_labels, len(a.trained.classes))
    grid = common_grid(roll[0][:1], roll[1][:1])[0].shape[-1]
    meta = {"title": f"vitlens compare: {a.name} vs {b.name}", "kind": "compare", "names": [a.name, b.name],
            "classes": list(a.trained.classes), "grid": grid, "top_k": top_k(grid * grid),
            "params_diff": data.params_diff(a.trained.params, b.trained.params)}
    return {"meta": meta, "a": docs[0], "b": docs[1], "agreement": gallery, "class_agreement": classes,
            "summary": summary(over_means, classes, gallery)}
