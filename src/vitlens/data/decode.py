"""Decode many picture files on every core, straight into arrays allocated once.

Workers (processes: PIL's per-picture work holds the GIL) each take a chunk of paths and
decode it with `load_image`, the decoding `vitlens predict` and `vitlens serve` use. Where
workers are forked (Linux) the final arrays live in shared memory and the workers write their
rows into them: nothing but digests and error lines travels back, and memory holds the final
arrays alone. Elsewhere (macOS, Windows: workers start afresh) each chunk's pixels travel
back and land in their rows at once: the final arrays and a few chunks in flight, never a
list of every decoded picture. Each file's bytes are hashed as they are read, for the
caller's duplicate check.
"""
from __future__ import annotations

import contextlib
import hashlib
import mmap
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
DIGEST = 20  # bytes of SHA-1 per file: fast where the CPU has SHA instructions; no attacker here
START = "fork" if sys.platform == "linux" else None  # None: the platform's own way to start workers

_out: list[np.ndarray] = []  # the arrays decode_chunk writes into: this process's, or its parent's


@dataclass
class Decoded:
    """What decoding one array's files gave: which rows hold a picture, each file's digest
    (of its bytes), and why each failed row failed."""
    ok: np.ndarray  # (N,) bool
    digests: np.ndarray  # (N,) S20
    reasons: dict[int, str] = field(default_factory=dict)


def cpu_count() -> int:
    """The cores this process may run on (a container's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_chunk(task: tuple[int, int, Sequence[str], int, bool]
                 ) -> tuple[int, int, int, np.ndarray | None, list[bytes], list[tuple[int, str]]]:
    """(array k, first row, paths, size, in place) -> (k, first row, n, the chunk's uint8
    (n, 3, size, size) pixels, or None where they went straight into `_out[k]`, the files'
    digests, [(row in chunk, why)] for files that could not be decoded: zero rows)."""
    k, start, paths, size, in_place = task
    n = len(paths)
    pixels = _out[k][start:start + n] if in_place else np.empty((n, 3, size, size), np.uint8)
    digests: list[bytes] = []
    failed: list[tuple[int, str]] = []
    with warnings.catch_warnings():  # PIL's "Corrupt EXIF data" etc.: once per file, thousands
        warnings.simplefilter("ignore")
        for j, path in enumerate(paths):
            digest, why = decode_file(path, size, pixels[j])
            digests.append(digest)
            if why is not None:
                failed.append((j, why))
                pixels[j] = 0
    return k, start, n, None if in_place else pixels, digests, failed


def decode_file(path: str, size: int, row: np.ndarray) -> tuple[bytes, str | None]:
    """Decode one file into `row` (uint8 (3, size, size)): the digest of its bytes, and why
    it could not be decoded (None: it was)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return b"", f"cannot read: {first_line(e)}"
    digest = hashlib.sha1(data, usedforsecurity=False).digest()
    if not data:
        return digest, "empty file"
    try:
        row[...] = load_image(data, size)[0].transpose(2, 0, 1)
    except BadImage as e:
        return digest, first_line(e)
    except Exception as e:  # noqa: BLE001 - a malformed file may make a PIL plugin raise
        # anything (struct.error, IndexError, EOFError): it is one bad file, reported as such
        return digest, f"unreadable: {type(e).__name__}: {first_line(e)}"
    return digest, None


def start_worker(out: list[np.ndarray]) -> None:
    """A worker's start: it writes into `out` (its parent's shared arrays, when forked) and
    leaves Ctrl-C and SIGTERM to the parent, which ends it (no tracebacks)."""
    _out[:] = out
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def empty(n: int, size: int, shared: bool) -> np.ndarray:
    """uint8 (n, 3, size, size), in memory that forked workers write into when `shared`."""
    shape = (n, 3, size, size)
    if not shared or not n:
        return np.empty(shape, np.uint8)
    return np.frombuffer(mmap.mmap(-1, n * 3 * size * size), np.uint8).reshape(shape)


def chunk_size(n: int, workers: int) -> int:
    """About 8 chunks per worker (an even share and a moving progress bar), at most CHUNK."""
    return max(1, min(CHUNK, -(-n // (workers * 8))))


def decode_all(paths: Sequence[Sequence[str]], size: int, *, workers: int = 0, progress: bool = True,
               desc: str = "decoding") -> list[tuple[np.ndarray, Decoded]]:
    """Decode each group of paths into a uint8 (len(group), 3, size, size) array on `workers`
    processes (0: every core; 1: here, in this process): one (array, Decoded) per group. Rows
    of failed files are zero and marked in `Decoded`; the result is the same for any `workers`.
    One call at a time in a process: the workers' arrays are this module's while it runs."""
    n = sum(len(p) for p in paths)
    workers = max(1, min(workers or cpu_count(), n))
    step = chunk_size(n, workers)
    pooled = workers > 1 and n > step
    in_place = not pooled or multiprocessing.get_context(START).get_start_method() == "fork"
    _out[:] = [empty(len(p), size, pooled and in_place) for p in paths]
    found = [Decoded(np.zeros(len(p), bool), np.zeros(len(p), f"S{DIGEST}")) for p in paths]
    tasks = [(k, i, list(p[i:i + step]), size, in_place) for k, p in enumerate(paths)
             for i in range(0, len(p), step)]
    try:
        with results(tasks, workers if pooled else 1, list(_out) if in_place else []) as done, \
                tqdm(total=n, desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
            for k, start, count, pixels, digests, failed in done:
                if pixels is not None:
                    _out[k][start:start + count] = pixels
                found[k].ok[start:start + count] = True
                found[k].digests[start:start + count] = digests
                for j, why in failed:
                    found[k].ok[start + j] = False
                    found[k].reasons[start + j] = why
                bar.update(count)
        return list(zip(_out, found))
    finally:
        _out.clear()


@contextlib.contextmanager
def results(tasks: list, workers: int, shared: list[np.ndarray]) -> Iterator[Iterator]:
    """The tasks' results as they finish, from a pool of `workers` processes that write into
    `shared`, or in order here for one worker. The pool starts before the progress bar starts
    its thread: fork copies one thread."""
    if workers < 2:
        yield map(decode_chunk, tasks)
        return
    ctx = multiprocessing.get_context(START)
    with ctx.Pool(workers, initializer=start_worker, initargs=(shared,)) as pool:
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
