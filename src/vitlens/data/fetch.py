"""Fetch an archive from a URL or a local path, with retries on transient errors, and
verify its MD5 before anything opens it.
"""
from __future__ import annotations

import hashlib
import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from vitlens.data.imageset import DataError


def local_path(url: str) -> Path | None:
    """The file a `file://` URL or plain path names; None for http(s)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive
        raise DataError(f"data.url={url!r} has unsupported scheme {parsed.scheme!r} "
                        "(use http(s)://, file:// or a plain path)")
    return Path(url).expanduser()


def _is_transient(err: Exception) -> bool:
    """Network trouble that a later attempt may not meet; local failures (a full disk, a
    permission) are not network errors and never reach here (see _stream)."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code >= 500 or err.code in (408, 429)
    return isinstance(err, (urllib.error.URLError, TimeoutError, ConnectionError,
                            http.client.HTTPException))


def _stream(url: str, dest: Path, timeout_s: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        try:
            f = open(dest, "wb")
        except OSError as e:
            raise DataError(f"cannot write the download to {dest}: {e.strerror or e}") from None
        with f, tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
            while chunk := resp.read(1 << 20):
                try:
                    f.write(chunk)
                except OSError as e:
                    raise DataError(f"cannot write the download to {dest}: "
                                    f"{e.strerror or e}") from None
                bar.update(len(chunk))


def download(url: str, dest: Path, *, retries: int, timeout_s: float,
             backoff_s: float = 0.5) -> None:
    """Download `url` to `dest`, retrying transient errors with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            _stream(url, dest, timeout_s)
            return
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - classified just below
            reason = getattr(e, "reason", None) or e
            if not _is_transient(e) or attempt == retries:
                raise DataError(
                    f"cannot download {url} ({reason}); offline, set data.url to a local copy "
                    "(a path or file:// URL) and data.md5 to its MD5") from None
            time.sleep(backoff_s * 2**attempt)


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_md5(archive: Path, expected: str) -> None:
    actual = md5sum(archive)
    if actual != expected.lower():
        raise DataError(f"MD5 mismatch for {archive}: expected {expected.lower()}, got {actual} "
                        "(set data.md5 if this is a different copy on purpose)")

