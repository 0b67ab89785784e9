"""Pictures as users have them -> the model's uint8 input, one way for every entry point.

`vitlens predict` (files) and `vitlens serve` (base64 PNG/JPEG in a request) both decode here,
so a picture gets the same pixels, and the same probabilities, either way.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
FORMATS = ("PNG", "JPEG", "BMP")
PICTURE_PX = 256  # largest side of the picture drawn under the map in predict's overlays
MAX_PIXELS = 50_000_000  # a larger picture is refused, not decoded (PIL warns from 89M)


class BadImage(Exception):
    """A picture the model cannot take; the message says why, in one line."""


def as_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB; transparent pixels become white (the colour hidden under them is
    arbitrary, often black)."""
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return img.convert("RGB")


def load_image(source: Path | bytes, size: int, picture: int = 0
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (size, size, 3) pixels of the central square of a file or an encoded picture
    and, with `picture`, the same square at up to `picture` pixels a side for drawing,
    (3, P, P) (else None). Turned upright (EXIF), laid on white, Lanczos. Raises BadImage."""
    try:
        empty = source.stat().st_size == 0 if isinstance(source, Path) else not source
        if empty:
            raise BadImage("empty file" if isinstance(source, Path) else "empty image")
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as img:
            if img.format not in FORMATS:
                raise BadImage(f"a {img.format} image, not PNG, JPEG or BMP")
            if img.width * img.height > MAX_PIXELS:
                raise BadImage(f"{img.width}x{img.height} pixels, more than {MAX_PIXELS:,}")
            # JPEG: decode at a reduced scale, never below PICTURE_PX, the same with or without
            # `picture`, so that drawing overlays does not change the prediction.
            img.draft(None, (max(size, PICTURE_PX),) * 2)
            rgb = as_rgb(ImageOps.exif_transpose(img))
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
