"""How the tracking code tells MLflow store failures apart: an unreachable server (go on
without logging), a SQLite store locked by another writer (wait and retry), anything else
(raise)."""
from __future__ import annotations

import time
from typing import Any

from vitlens.errors import uninterruptible


def unreachable(e: BaseException) -> bool:
    """Whether `e` (or what it wraps) is a network failure: MLflow's REST client raises an
    MlflowException whose context is the requests ConnectionError or timeout."""
    import requests

    cur: BaseException | None = e
    while cur is not None:
        if isinstance(cur, (requests.RequestException, ConnectionError, TimeoutError)):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def sqlite_locked(e: BaseException) -> bool:
    """Whether `e` is SQLite's "database is locked" (another writer holds the store): an
    OperationalError saying so in its cause chain, or MLflow's wrapping of one, which keeps
    only SQLAlchemy's rendering of it ("(sqlite3.OperationalError) database is locked")."""
    cur: BaseException | None = e
    while cur is not None:
        text = str(cur)
        if type(cur).__name__ == "OperationalError" and "database is locked" in text:
            return True
        if "(sqlite3.OperationalError) database is locked" in text:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


LOCK_RETRIES = 8  # waits of 0.2 s doubling: about 51 s in all before a lock error is raised


def retry(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, retried while SQLite is locked by another writer (parallel
    queued experiments share one store); any other error is raised at once."""
    for attempt in range(LOCK_RETRIES):
        try:
            with uninterruptible():
                return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - only lock errors are retried
            if not sqlite_locked(e) or attempt == LOCK_RETRIES - 1:
                raise
            time.sleep(0.2 * 2**attempt)
