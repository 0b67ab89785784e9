"""Atomic file output: a file a stage writes appears whole or not at all.

A write that fails (disk full, no permission, a read-only disk) leaves the previous file as it
was and raises one line naming the file: `cannot write models/model.pt: [Errno 28] No space
left on device`.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from vitlens.errors import VitlensError, first_line


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.
    An OSError in the block or the rename is a one-line VitlensError naming `path`."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        raise VitlensError(f"cannot write {path}: {first_line(e)}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically. Serialised in memory first: torch's own file writer reports a
    full disk as "unexpected pos 704 vs 598", a plain write as the OSError it is."""
    import io

    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.getbuffer())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """Write dict rows with the first row's keys as the header (the format `dvc plots` reads)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
