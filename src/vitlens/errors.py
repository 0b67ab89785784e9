"""One error type for every failure a user can fix, and the runner that reports it in one line."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator


class VitlensError(Exception):
    """A failure with a one-line cause the user can act on (bad params, bad data, bad URL)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), at most 300
    characters: what a one-line error quotes of a library's many-line one."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


_held: list[int] = []  # signals that arrived inside `uninterruptible()`, raised at its end
_depth = 0


def _raise_interrupt(signum: int, frame: object) -> None:
    if _depth:
        _held.append(signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Hold SIGTERM and Ctrl-C back until the block ends, then raise them: for MLflow store
    writes. Interrupted inside SQLite's transaction, the write lock stays with a connection
    nothing rolls back, and the KILLED mark that follows waits on that lock for minutes.
    Signals reach only the main thread, so other threads' blocks hold nothing back."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _held:
            signum = _held[-1]
            _held.clear()
            raise KeyboardInterrupt(f"signal {signum}")


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(): one line on stderr and a non-zero exit for every known failure.

    SIGTERM (and Ctrl-C) become KeyboardInterrupt so that `finally` blocks (temp-file
    cleanup, marking the MLflow run KILLED) run when DVC or a user kills the stage; never in
    the middle of a store write (`uninterruptible`).
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        main()
    except VitlensError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except MemoryError as e:  # numpy's "Unable to allocate ..." names the size it wanted
        print(f"error: out of memory ({first_line(e) or 'MemoryError'}): a smaller data.train_subset, "
              "model.image_size or train.batch_size needs less", file=sys.stderr)
        sys.exit(1)
