"""Which map this run's own scores trust: the one whose deletion AUC is lowest (the model's
confidence falls fastest when its top patches go), and a warning for every map the scores do
not back: one that deletion cannot tell from random (their 95% intervals overlap), or one
whose position bias says much of it is a place, not the picture (explain/position.py)."""
from __future__ import annotations

from typing import Any

SHOWN = ("rollout", "grad_rollout", "last_layer")  # the maps the explorer draws over an image


def map_verdicts(faithfulness: dict[str, Any] | None, position_warn: float) -> dict[str, Any] | None:
    """{"best": map, "best_auc": its deletion AUC, "warnings": {map: one line}} from the
    faithfulness stage's JSON; None without it (the explorer then opens on rollout)."""
    faithfulness = faithfulness or {}
    scores = {m: v for m, v in faithfulness.items() if m in SHOWN and isinstance(v, dict)}
    if not scores:
        return None
    best = min(scores, key=lambda m: scores[m]["deletion_auc"])
    rand = faithfulness.get("random")
    warnings = {}
    for m, s in scores.items():
        why = []
        if isinstance(rand, dict) and s["deletion_low"] <= rand["deletion_high"] \
                and s["deletion_high"] >= rand["deletion_low"]:
            why.append(f"deletion AUC {s['deletion_auc']:.3f} is within reach of random's "
                       f"{rand['deletion_auc']:.3f} (95% intervals overlap)")
        if s.get("position_bias", 0.0) >= position_warn:
            why.append(f"position bias {s['position_bias']:.2f}: much of it is a place, not the picture")
        if why:
            warnings[m] = "; ".join(why)
    return {"best": best, "best_auc": scores[best]["deletion_auc"], "warnings": warnings}
