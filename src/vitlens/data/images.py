"""Pictures as users have them -> the model's uint8 input, one way for every entry point.

`vitlens predict` (files), `vitlens serve` (base64 pictures in a request) and the folder reader
(`data.folder`, the user's own training pictures) all decode here, so a picture gets the same
pixels, and the same probabilities, whichever way it comes in.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# What PIL calls them; MPO is the JPEG that many phones and cameras write (a JPEG with extras).
FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP", "TIFF")
KINDS = "PNG, JPEG, BMP, GIF, WebP or TIFF"  # FORMATS as error messages name them
PICTURE_PX = 256  # largest side of the picture drawn under the map in predict's overlays
MAX_PIXELS = 50_000_000  # a larger picture is refused, not decoded (PIL warns from 89M)


class BadImage(Exception):
    """A picture the model cannot take; the message says why, in one line."""


def as_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB; transparent pixels become white (the colour hidden under them is
    arbitrary, often black); grey becomes three equal channels. 16-bit grey (PNG, TIFF) keeps
    its top 8 bits: PIL's own conversion clips it at 255, so that most of it turns white."""
    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # RGB: as it is, not a copy


def decode(source: Path | bytes, px: int) -> Image.Image:
    """The picture as RGB, upright (EXIF) and on white; a JPEG decoded at the smallest scale
    (1/2, 1/4, 1/8) that keeps both sides >= px, in libjpeg, far faster than full size."""
    try:
        empty = source.stat().st_size == 0 if isinstance(source, Path) else not source
        if empty:
            raise BadImage("empty file" if isinstance(source, Path) else "empty image")
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as img:
            if img.format not in FORMATS:
                raise BadImage(f"a {img.format} image, not {KINDS}")
            if img.width * img.height > MAX_PIXELS:
                raise BadImage(f"{img.width}x{img.height} pixels, more than {MAX_PIXELS:,}")
            img.draft(None, (px, px))
            ImageOps.exif_transpose(img, in_place=True)  # loads it; a copy only when it turns
            return as_rgb(img)
    except UnidentifiedImageError:
        raise BadImage(f"not an image ({KINDS} expected)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"unreadable: {e}") from None


def load_image(source: Path | bytes, size: int, picture: int = 0
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (size, size, 3) pixels of the central square of a file or an encoded picture
    and, with `picture`, the same square at up to `picture` pixels a side for drawing,
    (3, P, P) (else None). Turned upright (EXIF), laid on white, Lanczos from at least twice
    `size` (a JPEG's reduced-scale decode); the first frame of an animated GIF, WebP or
    multi-page TIFF. Raises BadImage."""
    small = np.asarray(ImageOps.fit(decode(source, 2 * size), (size, size), Image.Resampling.LANCZOS))
    if not picture:
        return small, None
    rgb = decode(source, picture)  # decoded again, larger: drawing never changes `small`
    side = min(picture, *rgb.size)
    big = np.asarray(ImageOps.fit(rgb, (side, side), Image.Resampling.LANCZOS))
    return small, big.transpose(2, 0, 1)
