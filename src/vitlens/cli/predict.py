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
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from vitlens import tracking
from vitlens.errors import VitlensError, first_line, run_main
from vitlens.explain.attention import upsample_map
from vitlens.explain.maps import compute_maps
from vitlens.plots.common import save_figure
from vitlens.plots.figures import prediction_overlay
from vitlens.report import data as explorer
from vitlens.report.page import write_explorer
from vitlens.trained import load_trained

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FORMATS = ("PNG", "JPEG", "BMP")
PICTURE_PX = 256  # largest side of the picture drawn under the map in --out overlays


class BadImage(Exception):
    """A file the model cannot take; the message says why."""


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
                errors.append(f"{p}: no PNG, JPEG or BMP files in this folder")
        elif p.exists():
            files.append(p)
        else:
            errors.append(f"{p}: no such file or folder")
    return files, errors


def _rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB; transparent pixels become white (the colour hidden under them is
    arbitrary, often black)."""
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: Path, size: int, picture: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (size, size, 3) pixels of the central square and, with `picture`, the same square
    at up to `picture` pixels a side for drawing, (3, P, P) (else None). Raises BadImage."""
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file")
        with Image.open(path) as img:
            if img.format not in FORMATS:
                raise BadImage(f"a {img.format} image, not PNG, JPEG or BMP")
            # JPEG: decode at a reduced scale, never below PICTURE_PX, the same with or without
            # `picture`, so that drawing overlays does not change the prediction.
            img.draft(None, (max(size, PICTURE_PX),) * 2)
            rgb = _rgb(ImageOps.exif_transpose(img))
    except UnidentifiedImageError:
        raise BadImage("not an image (PNG, JPEG or BMP expected)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"unreadable: {e}") from None
    small = np.asarray(ImageOps.fit(rgb, (size, size), Image.Resampling.LANCZOS))
    if not picture:
        return small, None
    side = min(picture, *rgb.size)
    big = np.asarray(ImageOps.fit(rgb, (side, side), Image.Resampling.LANCZOS))
    return small, big.transpose(2, 0, 1)


class FileModel:
    """A model file of the train stage: probabilities from the module MLflow serves, maps
    from the ViT's explicit-attention path."""

    def __init__(self, path: Path, device: torch.device | str = "auto"):
        self.trained = load_trained(path, device)
        self.served = self.trained.pixel_classifier()
        self.classes: list[str] = self.trained.classes
        self.size: int = self.trained.image_size
        self.device = self.trained.device

    @torch.no_grad()
    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(N, classes) for uint8 (N, S, S, 3) pixels."""
        return self.served(torch.from_numpy(x).to(self.device)).cpu().numpy()

    def maps(self, x: np.ndarray) -> np.ndarray:
        """(N, S, S) attention rollout for uint8 (N, S, S, 3) pixels."""
        nchw = torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2)
        maps = compute_maps(self.trained.vit, self.trained.norm(nchw), grad=False)
        return upsample_map(maps.rollout, x.shape[1]).cpu().numpy()


class MlflowModel:
    """A logged or registered MLflow model (runs:/..., models:/...) through pyfunc: the
    probabilities the served model gives."""

    def __init__(self, uri: str):
        import mlflow.pyfunc

        tracking.client()  # runs:/ and models:/ resolve against the project's store
        try:
            self.model = mlflow.pyfunc.load_model(uri)
        except Exception as e:  # noqa: BLE001 - MLflow raises many kinds for a bad URI
            raise VitlensError(
                f"cannot load MLflow model {uri} from {tracking.tracking_uri()} "
                f"({first_line(e)}); the train stage logs runs:/<run_id>/model and "
                "registers models:/vitlens-cifar10/<version>") from None
        meta = self.model.metadata
        classes = (meta.metadata or {}).get("classes")
        if not classes:
            raise VitlensError(f"{uri} is not a vitlens model: its metadata names no classes")
        self.classes: list[str] = list(classes)
        self.size: int = meta.get_input_schema().inputs[0].shape[1]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(x))


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


def top_classes(probs: np.ndarray, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """The k most probable (class, probability) per row of (N, classes), most probable first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


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
