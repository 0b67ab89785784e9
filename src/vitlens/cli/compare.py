"""`vitlens compare A B [--out DIR]`: where two models look, side by side, in one offline page.

A and B are each a model file, an MLflow run (id, runs:/..., models:/...) or a DVC experiment
name or git revision (vitlens.cli.refs). Both are shown the same seeded, class-balanced test
images of the dataset, chosen as the report stage chooses them (report.* of params.yaml), and
must share its classes. Writes DIR/index.html (vitlens.report.compare, page.py), atomically,
and logs it into both models' MLflow runs when tracking is on and they have runs.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from vitlens.cli.refs import resolve
from vitlens.config import load_params
from vitlens.data.choice import POOL_PER_IMAGE, seeded_sample
from vitlens.data.imageset import ImageSet, load_arrays
from vitlens.errors import VitlensError, run_main
from vitlens.model.trained import Trained, load_trained
from vitlens.pipeline.report import selected
from vitlens.report import compare
from vitlens.report.data import rollouts_and_predictions
from vitlens.report.page import write_explorer


def check_classes(names: tuple[str, str], models: tuple[Trained, Trained], data: ImageSet) -> None:
    """One line unless both models were trained on the dataset's classes and image size."""
    size = data.x_test.shape[-1]
    for name, t in zip(names, models):
        if list(t.classes) != list(data.classes):
            raise VitlensError(f"{name} does not share the dataset's classes ({len(t.classes)} classes "
                               f"{', '.join(t.classes[:3])}, ...; the dataset: {len(data.classes)} classes "
                               f"{', '.join(data.classes[:3])}, ...): compare models of one dataset")
        if t.image_size != size:
            raise VitlensError(f"{name} takes {t.image_size}px images, the dataset has {size}px")


def within(chosen: list[int], count: int) -> list[int]:
    """report.layers / report.heads (0-based) that this model has."""
    return [i for i in selected(chosen, count) if i < count]


def run_compare(a: str, b: str, out: Path, *, params_path: Path, data_path: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    params = load_params(params_path)
    cfg = params.report
    data = load_arrays(data_path)
    with tempfile.TemporaryDirectory() as tmp:
        refs = [resolve(name, Path(tmp) / side) for name, side in ((a, "a"), (b, "b"))]
        models = (load_trained(refs[0].path), load_trained(refs[1].path))
    check_classes((a, b), models, data)
    n_test, k = len(data.y_test), len(data.classes)
    # One pass of each model over one seeded pool gives the predictions that choose the images
    # and the rollouts of both the chosen ones and the class means: its first
    # report.class_images are the report stage's class-mean images (the same draw, a prefix).
    pool = seeded_sample(n_test, min(n_test, max(cfg.class_images, POOL_PER_IMAGE * cfg.images)),
                         cfg.seed, draw=1)
    (ra, pa), (rb, pb) = (rollouts_and_predictions(t, data.x_test[pool], cfg.batch_size) for t in models)
    picked = compare.choose(pa, pb, data.y_test[pool], cfg.images, k if 2 * k <= cfg.images else None)
    chosen, means_idx, m = pool[picked], pool[:cfg.class_images], cfg.class_images
    sides = [compare.Side(r.name, t, r.reports) for r, t in zip(refs, models)]
    doc = compare.document(
        sides[0], sides[1], data.x_test[chosen], [f"test #{i}" for i in chosen],
        [int(t) for t in data.y_test[chosen]], rollouts=(ra[picked], rb[picked]),
        means_images=data.x_test[means_idx], means_labels=[int(t) for t in data.y_test[means_idx]],
        means_rollouts=(ra[:m], rb[:m]),
        layers=(within(cfg.layers, len(models[0].vit.blocks)), within(cfg.layers, len(models[1].vit.blocks))),
        heads=(within(cfg.heads, models[0].params["model"]["heads"]),
               within(cfg.heads, models[1].params["model"]["heads"])),
        batch_size=cfg.batch_size, position_warn=params.faithfulness.position_warn)
    page = out / "index.html"
    write_explorer(page, doc)
    seconds = time.perf_counter() - t0
    s = doc["summary"]
    print(f"wrote {page} ({page.stat().st_size / 2**20:.1f} MB) in {seconds:.1f}s: {len(chosen)} test images; "
          f"over {s['images']}, rank correlation of the rollouts {s['spearman']:.3f}, top-"
          f"{doc['meta']['top_k']} overlap {s['overlap']:.3f}; least alike: {data.classes[s['lowest_class']]}")
    log(page, models, params.tracking.enabled)
    return {"path": page, "bytes": page.stat().st_size, "seconds": seconds, "summary": s}


def log(page: Path, models: tuple[Trained, Trained], enabled: bool) -> None:
    """The page into each model's run; a run this store lacks is a warning: the page is written."""
    for t in models:
        try:
            run = t.run(enabled)
            if run is not None:
                run.log_artifact(page, "compare")
        except VitlensError as e:
            print(f"warning: not logged to MLflow: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="model A: a model file, an MLflow run or a DVC experiment/revision")
    ap.add_argument("b", help="model B: the same kinds as A")
    ap.add_argument("--out", type=Path, default=Path("reports/compare"), help="folder of index.html")
    ap.add_argument("--data", type=Path, default=Path("data/dataset.npz"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()
    run_compare(args.a, args.b, args.out, params_path=args.params, data_path=args.data)


if __name__ == "__main__":
    run_main(main)
