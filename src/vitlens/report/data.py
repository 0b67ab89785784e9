"""What the explorer shows, as one JSON-able document. Every map comes from
vitlens.explain.maps.compute_maps; nothing here computes attention.

Encodings, chosen for size (a 64-image report of the default model stays under 10 MB):
- `pack`: maps as uint8 with one scale per map (its max): value = byte / 255 * scale.
- `pack_attention`: full attention rows (every query, CLS included) of the stored layers and
  heads as round(63 * sqrt(a)): fine steps near 0, where most weights are, no per-row scales,
  and 6 bits compress to about 40% of the bytes under zlib (8 bits: 70%; a CPU-preset report of
  64 images is 2.6 MB of attention instead of 4.3); the page inflates them with
  DecompressionStream("deflate").
Both are base64 strings in "data".
"""
from __future__ import annotations

import base64
import io
import zlib
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitlens.explain.maps import compute_maps
from vitlens.explain.trust import map_verdicts
from vitlens.model.trained import Trained


def pack(x: np.ndarray, dims: int = 2) -> dict[str, Any]:
    """(..., *map) float maps -> uint8 per map of the last `dims` dims, with its max."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(-1, int(np.prod(x.shape[-dims:]))) if x.size else x.reshape(0, 1)
    scale = np.maximum(flat.max(axis=1, initial=0.0), 1e-12)
    q = np.round(np.clip(flat / scale[:, None], 0, 1) * 255).astype(np.uint8)
    return {"shape": list(x.shape), "scale": [float(f"{s:.6g}") for s in scale],
            "data": base64.b64encode(q.tobytes()).decode()}


def unpack(p: dict[str, Any], dims: int = 2) -> np.ndarray:
    """What the page decodes from `pack`: the maps it draws."""
    q = np.frombuffer(base64.b64decode(p["data"]), dtype=np.uint8).astype(np.float64)
    n = int(np.prod(p["shape"][-dims:]))
    return (q.reshape(-1, n) / 255 * np.array(p["scale"])[:, None]).reshape(p["shape"])


ATTENTION_LEVELS = 63  # steps of sqrt(attention)


def pack_attention(a: np.ndarray) -> dict[str, Any]:
    q = np.round(np.sqrt(np.clip(a, 0, 1)) * ATTENTION_LEVELS).astype(np.uint8)
    return {"shape": list(a.shape), "encoding": "sqrt-zlib", "levels": ATTENTION_LEVELS,
            "data": base64.b64encode(zlib.compress(q.tobytes(), 9)).decode()}


def unpack_attention(p: dict[str, Any]) -> np.ndarray:
    q = np.frombuffer(zlib.decompress(base64.b64decode(p["data"])), dtype=np.uint8)
    return ((q.astype(np.float64) / p["levels"]) ** 2).reshape(p["shape"])


def png_url(image: np.ndarray) -> str:
    """uint8 (3, S, S) -> a PNG data URL (the page scales it up, pixelated)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def gallery(trained: Trained, images: np.ndarray, labels: list[str], truth: list[int | None], *,
            layers: list[int], heads: list[int], batch_size: int) -> dict[str, Any]:
    """The chosen images (uint8 (n, 3, S, S)) with their predictions and every map; the
    attention rows of `layers` x `heads` (0-based) for the head and model views."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("probs", "rollout", "grad", "heads", "attn")}
    shown = 1 + trained.vit.grid**2  # CLS and the patches: the views draw no registers
    for xb in torch.from_numpy(np.ascontiguousarray(images)).split(batch_size):
        m = compute_maps(trained.vit, trained.norm(xb.to(trained.device)))
        parts["probs"].append(torch.softmax(m.logits, dim=1).cpu().numpy())
        parts["rollout"].append(m.rollout.cpu().numpy())
        parts["grad"].append(m.by_name("grad_rollout").cpu().numpy())
        parts["heads"].append(m.heads.cpu().numpy())
        attn = torch.stack([m.attns[l][:, heads, :shown, :shown] for l in layers], dim=1)
        parts["attn"].append(attn.float().cpu().numpy())
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    probs = cat["probs"]
    return {"labels": list(labels), "truth": list(truth), "pred": probs.argmax(1).tolist(),
            "conf": [round(float(p), 4) for p in probs.max(1)],
            "probs": np.round(probs, 4).tolist(), "src": [png_url(im) for im in images],
            "rollout": pack(cat["rollout"]), "grad_rollout": pack(cat["grad"]),
            "heads": pack(cat["heads"]), "layers": list(layers), "head_ids": list(heads),
            "attention": pack_attention(cat["attn"])}


def rollouts_and_predictions(trained: Trained, images: np.ndarray, batch_size: int
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(n, g, g) rollouts and (n,) predicted classes of uint8 images (n, 3, S, S), one pass."""
    maps, pred = [], []
    for xb in torch.from_numpy(np.ascontiguousarray(images)).split(batch_size):
        m = compute_maps(trained.vit, trained.norm(xb.to(trained.device)), grad=False)
        maps.append(m.rollout.cpu().numpy())
        pred.append(m.logits.argmax(1).cpu().numpy())
    return np.concatenate(maps), np.concatenate(pred)


def rollouts(trained: Trained, images: np.ndarray, batch_size: int) -> np.ndarray:
    return rollouts_and_predictions(trained, images, batch_size)[0]


def class_means(trained: Trained, images: np.ndarray, labels: list[int], *,
                batch_size: int, maps: np.ndarray | None = None) -> dict[str, Any]:
    """Per class, the mean rollout over its images among `images`, and how many there were;
    `maps`: their rollouts (n, g, g) when the caller has them already."""
    maps = rollouts(trained, images, batch_size) if maps is None else maps
    y = np.asarray(labels)
    k = len(trained.classes)
    counts = [int((y == c).sum()) for c in range(k)]
    means = np.stack([maps[y == c].mean(axis=0) if counts[c] else np.zeros(maps.shape[1:])
                      for c in range(k)])
    return {"counts": counts, "maps": pack(means)}


def training(snapshots: dict[str, Any] | None) -> dict[str, Any] | None:
    """The train stage's per-epoch maps of fixed validation images, or None without them."""
    if not snapshots or not snapshots.get("epochs"):
        return None
    images = np.asarray(snapshots["images"])
    return {"epochs": list(snapshots["epochs"]), "truth": list(snapshots["truth"]),
            "src": [png_url(im) for im in images],
            "rollout": pack(np.asarray(snapshots["rollout"], dtype=np.float32)),
            "heads": pack(np.asarray(snapshots["heads"], dtype=np.float32))}


def params_diff(run: dict[str, dict[str, Any]], defaults: dict[str, dict[str, Any]] | None
                ) -> list[list[Any]] | None:
    """[key, the run's value, the default] for every param that differs; None without defaults."""
    if defaults is None:
        return None
    return [[f"{s}.{k}", v, defaults.get(s, {}).get(k)] for s, sec in run.items()
            for k, v in sec.items() if defaults.get(s, {}).get(k) != v and s != "tracking"]


def facts(trained: Trained, *, defaults: dict[str, dict[str, Any]] | None, metrics: Any,
          faithfulness: Any, distance: Any, position_warn: float) -> dict[str, Any]:
    """The run's numbers: changed params, test accuracy, per-epoch history, faithfulness AUCs
    and position biases, the map they trust (explain/trust.py: the page opens on it) and the
    mean attention distance (L, heads) in pixels; what is missing is None."""
    dist = None
    if distance:
        rows = distance["per_head"]
        dist = [[r["distance_px"] for r in rows if r["layer"] == l]
                for l in sorted({r["layer"] for r in rows})]
    summary = {m: v for m, v in faithfulness.items() if isinstance(v, dict)} if faithfulness else None
    keep = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc")
    return {"params_diff": params_diff(trained.params, defaults),
            "test_accuracy": metrics.get("accuracy") if metrics else None,
            "per_class_accuracy": metrics.get("per_class_accuracy") if metrics else None,
            "history": [{k: r[k] for k in keep} for r in trained.history],
            "faithfulness": summary, "maps": map_verdicts(faithfulness, position_warn),
            "distance": dist}


def document(trained: Trained, *, title: str, kind: str, gallery: dict[str, Any],
             class_means: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
             facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole explorer document; the sections a kind lacks are None (hidden)."""
    m, vit = trained.params["model"], trained.vit
    meta = {"title": title, "kind": kind, "classes": list(trained.classes),
            "grid": vit.grid, "image_size": vit.grid * vit.patch_size,
            "patch_size": vit.patch_size, "n_layers": len(vit.blocks), "n_heads": m["heads"],
            "readout": trained.vit.readout, "run_id": trained.run_id}
    return {"meta": meta, "images": gallery, "class_means": class_means, "training": training,
            "facts": facts}
