"""A request body -> the model's uint8 pixels: what `vitlens serve` accepts, and why it refuses.

    {"inputs": uint8 (N, H, W, 3) nested lists}   (or "instances"), as `mlflow models serve` takes
    {"images": ["<base64 PNG, JPEG, BMP, GIF, WebP or TIFF>"]}   decoded by vitlens.data.images, as predict does

Anything else is Refused with an HTTP status and a one-line reason.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from typing import Any

import numpy as np

from vitlens.data.images import BadImage, load_image
from vitlens.errors import first_line

USAGE = 'send {"inputs": uint8 (N, H, W, 3) lists} or {"images": [base64 PNG/JPEG/BMP, ...]}'


class Refused(Exception):
    """A request the server will not run: an HTTP status and a one-line reason."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def bad(message: str) -> Refused:
    return Refused(400, "BAD_REQUEST", message)


def pixels(value: Any, size: int) -> np.ndarray:
    """A request's nested lists -> uint8 (N, size, size, 3); Refused unless exactly that."""
    if not isinstance(value, list) or not value:
        raise bad(f"inputs: expected a non-empty list of ({size}, {size}, 3) images")
    try:
        x = np.asarray(value)
    except ValueError:
        raise bad(f"inputs: ragged lists; expected (N, {size}, {size}, 3)") from None
    if x.shape[1:] != (size, size, 3):
        raise bad(f"inputs: shape {x.shape}; expected (N, {size}, {size}, 3)")
    if x.dtype.kind not in "iu":
        raise bad(f"inputs: {x.dtype} values; expected integers 0-255")
    if x.min() < 0 or x.max() > 255:
        raise bad(f"inputs: values {x.min()}..{x.max()}; expected integers 0-255")
    return x.astype(np.uint8)


def pictures(value: Any, size: int) -> np.ndarray:
    """Base64 pictures (a `data:image/...;base64,` prefix allowed) -> uint8 (N, size, size, 3)."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise bad("images: expected a non-empty list of base64 strings")
    out = []
    for i, text in enumerate(value):
        try:
            data = base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text,
                                    validate=True)
        except (binascii.Error, ValueError):
            raise bad(f"images[{i}]: not base64") from None
        try:
            out.append(load_image(data, size)[0])
        except BadImage as e:
            raise bad(f"images[{i}]: {e}") from None
    return np.stack(out)


# The common request, {"inputs": [[[[r, g, b], ...], ...], ...]} of integers: digits, commas,
# brackets and whitespace only between the outer braces.
PLAIN = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"(?:inputs|instances)"[ \t\n\r]*:[ \t\n\r]*'
                   rb'(\[[0-9,\[\] \t\n\r]*\])[ \t\n\r]*\}[ \t\n\r]*')


@functools.lru_cache(maxsize=64)
def skeleton(n: int, size: int) -> bytes:
    """The brackets and commas of n (size, size, 3) images as compact JSON, digits left out."""
    row = b"[" + b",".join([b"[,,]"] * size) + b"]"
    image = b"[" + b",".join([row] * size) + b"]"
    return b"[" + b",".join([image] * n) + b"]"


def plain_pixels(body: bytes, size: int, max_images: int) -> np.ndarray | None:
    """A PLAIN body of n <= max_images whole images of 0-255 -> uint8 (n, size, size, 3),
    parsed by numpy (json.loads and np.asarray take ~9 ms for 8 images, this ~3); None for
    anything else, which `parse` then reads (and refuses, saying why) the slow way."""
    m = PLAIN.fullmatch(body)
    if m is None:
        return None
    raw = np.frombuffer(m.group(1), np.uint8)
    kept = np.flatnonzero(raw > ord(" "))  # all but JSON's whitespace
    c = raw[kept]
    brackets = c[(c - ord("0")) >= 10].tobytes()  # uint8 wraps around: digits land below 10
    n = (len(brackets) - 1) // (len(skeleton(1, size)) - 1)
    if not 1 <= n <= max_images or brackets != skeleton(n, size):
        return None
    # The skeleton is right; now each number must sit in a place of it, one per place: a run
    # of 1-3 digits after "[" or "," and before "," or "]", with no space inside and no
    # leading zero.
    digit = (c - ord("0")) < 10
    inside = digit[1:] & digit[:-1]
    if (inside & (np.diff(kept) > 1)).any():  # "1 2" is two numbers, not 12
        return None
    starts = np.flatnonzero(digit[1:] & ~digit[:-1]) + 1  # c starts with "["
    ends = np.flatnonzero(digit[:-1] & ~digit[1:])        # and ends with "]"
    if len(starts) != n * size * size * 3 or len(ends) != len(starts):
        return None
    length, before, after = ends - starts + 1, c[starts - 1], c[ends + 1]
    d = (c - ord("0")).astype(np.int16)
    if (length.max() > 3 or ((d[starts] == 0) & (length > 1)).any()
            or not ((before == ord("[")) | (before == ord(","))).all()
            or not ((after == ord(",")) | (after == ord("]"))).all()):
        return None
    x = d[starts]
    for k in (1, 2):  # the second and third digits, where there are
        more = length > k
        x[more] = x[more] * 10 + d[starts[more] + k]
    if x.max() > 255:
        return None
    return x.astype(np.uint8).reshape(n, size, size, 3)


def parse(body: bytes, size: int, max_images: int) -> np.ndarray:
    """A request body -> uint8 (N, size, size, 3) with 1 <= N <= max_images; Refused if not."""
    fast = plain_pixels(body, size, max_images)
    if fast is not None:
        return fast
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"not JSON: {first_line(e)}") from None
    keys = doc.keys() & {"inputs", "instances", "images"} if isinstance(doc, dict) else set()
    if len(keys) != 1:
        raise bad(USAGE)
    key = keys.pop()
    count = len(doc[key]) if isinstance(doc[key], list) else 0
    if count > max_images:
        raise Refused(413, "REQUEST_TOO_LARGE", f"{key}: {count} images, at most {max_images} "
                                                "per request")
    return pictures(doc[key], size) if key == "images" else pixels(doc[key], size)
