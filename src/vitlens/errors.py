"""One error type for every failure a user can fix, and the runner that reports it in one line."""
from __future__ import annotations

import signal
import sys
from collections.abc import Callable


class VitlensError(Exception):
    """A failure with a one-line cause the user can act on (bad params, bad data, bad URL)."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), at most 300
    characters: what a one-line error quotes of a library's many-line one."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's main(): one line on stderr and a non-zero exit for every known failure.

    SIGTERM is turned into KeyboardInterrupt so that `finally` blocks (temp-file cleanup,
    marking the MLflow run KILLED) run when DVC or a user kills the stage.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        main()
    except VitlensError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
