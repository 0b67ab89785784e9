"""Decode many picture files on every core, straight into arrays allocated once.

Workers (processes: PIL's per-picture work holds the GIL) each take a chunk of paths, decode
it with `load_image` (the decoding `vitlens predict` and `vitlens serve` use) and send back
one uint8 array per chunk, which lands in its rows of the caller's arrays at once: memory
holds the final arrays and a few chunks in flight, never a list of every decoded picture.
Each file's bytes are hashed as they are read, for the caller's duplicate check.
"""
from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from vitlens.data.images import BadImage, load_image
from vitlens.errors import first_line

CHUNK = 256  # pictures per task at most: big enough to hide the hand-over, small enough to stream
DIGEST = 16  # bytes of blake2b per file


@dataclass
class Decoded:
    """What decoding one array's files gave: which rows hold a picture, each file's digest
    (of its bytes), and why each failed row failed."""
    ok: np.ndarray  # (N,) bool
    digests: np.ndarray  # (N,) S16
    reasons: dict[int, str] = field(default_factory=dict)


def cpu_count() -> int:
    """The cores this process may run on (a container's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_chunk(task: tuple[int, int, Sequence[str], int]
                 ) -> tuple[int, int, np.ndarray, list[bytes], list[tuple[int, str]]]:
    """(array, first row, paths, size) -> (array, first row, uint8 (n, size, size, 3) pixels,
    digests, [(row in chunk, why)] for the files that could not be decoded: zero rows)."""
    dest, start, paths, size = task
    pixels = np.zeros((len(paths), size, size, 3), np.uint8)
    digests: list[bytes] = []
    failed: list[tuple[int, str]] = []
    with warnings.catch_warnings():  # PIL's "Corrupt EXIF data" etc.: once per file, thousands
        warnings.simplefilter("ignore")
        for j, path in enumerate(paths):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                digests.append(b"")
                failed.append((j, f"cannot read: {first_line(e)}"))
                continue
            digests.append(hashlib.blake2b(data, digest_size=DIGEST).digest())
            try:
                if not data:
                    raise BadImage("empty file")
                pixels[j] = load_image(data, size)[0]
            except BadImage as e:
                failed.append((j, first_line(e)))
            except Exception as e:  # noqa: BLE001 - a malformed file may make a PIL plugin raise
                # anything (struct.error, IndexError, EOFError): it is one bad file, reported as such
                failed.append((j, f"unreadable: {type(e).__name__}: {first_line(e)}"))
    return dest, start, pixels, digests, failed


def quiet_worker() -> None:
    """Workers leave Ctrl-C and SIGTERM to the parent, which ends them (no tracebacks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def chunk_size(n: int, workers: int) -> int:
    """About 8 chunks per worker (an even share and a moving progress bar), at most CHUNK."""
    return max(1, min(CHUNK, -(-n // (workers * 8))))


def decode_into(paths: Sequence[Sequence[str]], out: Sequence[np.ndarray], size: int, *,
                workers: int = 0, progress: bool = True, desc: str = "decoding") -> list[Decoded]:
    """Decode `paths[k]` into the rows of `out[k]` (uint8 (len(paths[k]), 3, size, size)) on
    `workers` processes (0: every core; 1: here, in this process). Failed rows stay zero and
    are marked in the returned `Decoded`; the result is the same for any `workers`."""
    n = sum(len(p) for p in paths)
    workers = max(1, min(workers or cpu_count(), n))
    step = chunk_size(n, workers)
    tasks = [(k, i, list(p[i:i + step]), size) for k, p in enumerate(paths) for i in range(0, len(p), step)]
    found = [Decoded(np.zeros(len(p), bool), np.zeros(len(p), f"S{DIGEST}")) for p in paths]
    with results(tasks, workers) as done, \
            tqdm(total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        for k, start, pixels, digests, failed in done:
            stop = start + len(pixels)
            out[k][start:stop] = pixels.transpose(0, 3, 1, 2)
            found[k].ok[start:stop] = True
            found[k].digests[start:stop] = digests
            for j, why in failed:
                found[k].ok[start + j] = False
                found[k].reasons[start + j] = why
            bar.update(len(pixels))
    return found


@contextlib.contextmanager
def results(tasks: list, workers: int) -> Iterator[Iterator]:
    """The tasks' results as they finish, from a pool of `workers` processes, or in order here
    for one worker or one task. The pool starts before the progress bar starts its thread:
    fork copies one thread."""
    if workers < 2 or len(tasks) < 2:
        yield map(decode_chunk, tasks)
        return
    # fork: workers start at once with vitlens imported. Elsewhere (macOS, Windows) the
    # platform's own way, which imports this module afresh in each worker.
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    with ctx.Pool(min(workers, len(tasks)), initializer=quiet_worker) as pool:
        yield pool.imap_unordered(decode_chunk, tasks)
    # leaving the block ends the workers: idle once every result is in; on an error, at once


def compact(x: np.ndarray, keep: np.ndarray, block: int = 1024) -> np.ndarray:
    """x[keep] without a second copy of x: the kept rows move forward in place, `block` rows at
    a time (a kept row's new place is never past its old one, nor past a later block's rows)."""
    rows = np.flatnonzero(keep)
    if len(rows) == len(x):
        return x
    for i in range(0, len(rows), block):
        idx = rows[i:i + block]
        x[i:i + len(idx)] = x[idx]
    return x[:len(rows)]
