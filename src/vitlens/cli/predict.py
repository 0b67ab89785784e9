"""Predict CIFAR-10 classes for your own pictures, and show where the model looked.

    vitlens predict photo.jpg shots/ [--top-k 3] [--json] [--out overlays/]
    vitlens predict photo.jpg --model-uri models:/vitlens-cifar10/1
    make predict IMAGES="photo.jpg shots/" EXTRA="--top-k 5"

Takes PNG, JPEG and BMP files, or folders of them (the folder's own files, not subfolders), of
any size and mode (RGB, RGBA, grey, palette). Each is turned upright (EXIF), laid on white
where it is transparent, cropped to its central square and resized to the model's 32x32.
A file that cannot be read gets one line on stderr and the exit status is 1; the others are
still predicted.

--out DIR writes one PNG per picture with the attention rollout over it; --report DIR writes
DIR/index.html, the offline attention explorer of every readable picture. Both need the model
file: a logged MLflow model is a traced graph without the attention path.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vitlens.cli.models import FileModel, MlflowModel, top_classes
from vitlens.data.images import KINDS, PICTURE_PX, SUFFIXES, BadImage, load_image
from vitlens.errors import VitlensError, run_main
from vitlens.plots.common import save_figure
from vitlens.plots.figures import prediction_overlay
from vitlens.report import data as explorer
from vitlens.report.page import write_explorer


def image_files(inputs: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """The files to predict, in the order given (a folder's PNG/JPEG/BMP files sorted by
    name), and one error line per input that names nothing to predict."""
    files: list[Path] = []
    errors: list[str] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
            files += found
            if not found:
                errors.append(f"{p}: no {KINDS} files in this folder")
        elif p.exists():
            files.append(p)
        else:
            errors.append(f"{p}: no such file or folder")
    return files, errors


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]
    overlay: str | None = None

    def line(self) -> str:
        return f"{self.image}: " + ", ".join(f"{c} {100 * p:.1f}%" for c, p in self.top)

    def as_dict(self) -> dict:
        return {"image": self.image, "overlay": self.overlay,
                "top_k": [{"class": c, "probability": p} for c, p in self.top]}


def _batches(files: list[Path], size: int, batch_size: int, picture: int,
             errors: list[str]) -> Iterator[tuple[list[Path], np.ndarray, list]]:
    """(paths, uint8 (B, S, S, 3), pictures) per batch of readable files; bad ones go to errors."""
    for i in range(0, len(files), batch_size):
        paths, pixels, pictures = [], [], []
        for f in files[i:i + batch_size]:
            try:
                small, big = load_image(f, size, picture)
            except BadImage as e:
                errors.append(f"{f}: {e}")
                continue
            paths.append(f)
            pixels.append(small)
            pictures.append(big)
        if paths:
            yield paths, np.stack(pixels), pictures


def _overlay_path(out: Path, image: Path, taken: set[str]) -> Path:
    """out/<stem>.png, numbered when two inputs share a stem (a/cat.png, b/cat.jpg)."""
    name, n = f"{image.stem}.png", 1
    while name in taken:
        name, n = f"{image.stem}-{n}.png", n + 1
    taken.add(name)
    return out / name


def write_report(model: FileModel, pixels: list[np.ndarray], names: list[str], folder: Path,
                 batch_size: int) -> Path:
    """The explorer of the user's pictures (uint8 (S, S, 3) each) in folder/index.html: their
    predictions, every map, head and model views; no class means, training or run facts."""
    x = np.stack(pixels).transpose(0, 3, 1, 2)
    t = model.trained
    doc = explorer.document(t, title=f"vitlens: {len(names)} pictures", kind="pictures",
                            gallery=explorer.gallery(t, np.ascontiguousarray(x), names, [None] * len(names),
                                                     layers=list(range(len(t.vit.blocks))),
                                                     heads=list(range(t.params["model"]["heads"])),
                                                     batch_size=batch_size))
    out = folder / "index.html"
    write_explorer(out, doc)
    return out


def run_predict(model: FileModel | MlflowModel, inputs: Sequence[Path], *, top_k: int = 3,
                batch_size: int = 256, out: Path | None = None, report: Path | None = None
                ) -> tuple[list[Prediction], list[str]]:
    """Predictions for every readable picture in `inputs`, and one error line per bad input;
    with `out`, one overlay PNG per picture there, with `report`, the explorer of them all in
    report/index.html (FileModel only)."""
    files, errors = image_files(inputs)
    results: list[Prediction] = []
    kept: list[np.ndarray] = []
    taken: set[str] = set()
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=len(files) <= batch_size)
    for paths, x, pictures in _batches(files, model.size, batch_size, PICTURE_PX if out else 0,
                                       errors):
        tops = top_classes(model.probabilities(x), model.classes, top_k)
        maps = model.maps(x) if out is not None and isinstance(model, FileModel) else None
        for i, (path, top) in enumerate(zip(paths, tops)):
            results.append(Prediction(str(path), top))
            if report is not None:
                kept.append(x[i])
            if maps is not None and out is not None:
                dest = _overlay_path(out, path, taken)
                save_figure(prediction_overlay(pictures[i], x[i].transpose(2, 0, 1), maps[i], top,
                                               title=path.name), dest)
                results[-1].overlay = str(dest)
        bar.update(len(paths))
    bar.close()
    if report is not None and kept and isinstance(model, FileModel):
        print(f"wrote {write_report(model, kept, [Path(r.image).name for r in results], report, batch_size)}",
              file=sys.stderr)
    return results, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="files or folders")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--model", type=Path, default=Path("models/model.pt"),
                       help="model file of the train stage (default: %(default)s)")
    which.add_argument("--model-uri", help="MLflow model: runs:/<run_id>/model or "
                                           "models:/<name>/<version>")
    ap.add_argument("--top-k", type=int, default=3, help="classes shown per picture")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("--out", type=Path, help="write an attention overlay PNG per picture here")
    ap.add_argument("--report", type=Path, metavar="DIR",
                    help="write the attention explorer of the pictures to DIR/index.html")
    ap.add_argument("--batch-size", type=int, default=256, help="pictures per forward pass")
    args = ap.parse_args()
    if args.top_k < 1 or args.batch_size < 1:
        ap.error("--top-k and --batch-size must be >= 1")
    if args.model_uri and (args.out or args.report):
        raise VitlensError("--out and --report need the model file (--model models/model.pt): the MLflow "
                           "model is a traced graph without the attention path")
    model = MlflowModel(args.model_uri) if args.model_uri else FileModel(args.model)
    results, errors = run_predict(model, args.images, top_k=args.top_k,
                                  batch_size=args.batch_size, out=args.out, report=args.report)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
    elif results:
        print("\n".join(r.line() for r in results))
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
