"""The download stage end to end, plus its building blocks. The stage runs in this process as
`python -m` runs it (its main() under run_main, sys.argv, cwd), and once as the real command
line, the way DVC runs it.

Every failure must end in one `error:` line naming the cause, no traceback, and no file left
behind: neither the output nor a temp file, nor anything a hostile archive tried to create.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from conftest import (
    ROOT,
    TarEntry,
    expected_arrays,
    free_port,
    py2_pickle,
    run_cli,
    write_cifar_archive,
    write_params,
)
from vitlens.data.cifar import _BatchUnpickler, read_archive
from vitlens.data.fetch import local_path, verify_md5
from vitlens.data.imageset import DataError, load_arrays
from vitlens.io import atomic_path
from vitlens.stages import download

N = 20  # images per batch (and in the test batch) of the archives built per test
PROXIES = [k for k in os.environ if "proxy" in k.lower()]  # unset: 127.0.0.1 stays local


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class Stage:
    """Runs the download stage in `cwd` with params.yaml's data section edited: in this process
    given `monkeypatch` and `capsys`, else as `python -m vitlens.stages.download`."""

    def __init__(self, cwd: Path, params: dict, monkeypatch: pytest.MonkeyPatch | None = None,
                 capsys: pytest.CaptureFixture | None = None) -> None:
        self.cwd, self.params, self.monkeypatch, self.capsys = cwd, params, monkeypatch, capsys
        self.params_path = write_params(cwd / "params.yaml", params)
        self.out = cwd / "data" / "cifar10.npz"
        self.out.parent.mkdir()

    def __call__(self, **data: Any) -> Result:
        self.params["data"].update(data)
        write_params(self.params_path, self.params)
        args = ["--params", str(self.params_path), "--out", str(self.out)]
        if self.monkeypatch is None or self.capsys is None:
            env = {k: v for k, v in os.environ.items() if k not in PROXIES}
            r = subprocess.run([sys.executable, "-m", "vitlens.stages.download", *args],
                               cwd=self.cwd, env=env, capture_output=True, text=True, timeout=120)
            return Result(r.returncode, r.stdout, r.stderr)
        with self.monkeypatch.context() as mp:
            mp.chdir(self.cwd)
            for key in PROXIES:
                mp.delenv(key)
            return Result(*run_cli(mp, self.capsys, download.main, *args))


@pytest.fixture
def stage(tmp_path: Path, params_dict: dict, monkeypatch: pytest.MonkeyPatch,
          capsys: pytest.CaptureFixture) -> Stage:
    return Stage(tmp_path, params_dict, monkeypatch, capsys)


def test_the_command_line_writes_the_arrays_or_fails_in_one_line(tmp_path: Path, params_dict: dict,
                                                                 cifar_archive) -> None:
    """As DVC runs it: `python -m`, a relative path from its cwd; one `error:` line and
    exit status 1, no traceback, nothing left, on a failure."""
    stage = Stage(tmp_path, params_dict)
    r = stage(url=os.path.relpath(cifar_archive.path, tmp_path), md5=cifar_archive.md5)
    assert r.returncode == 0, r.stderr
    assert "200 train + 40 test images, 10 classes" in r.stdout
    assert_dataset(stage.out)
    stage.out.unlink()
    stage.out.with_suffix(".json").unlink()  # the summary beside it
    r = stage(md5="0" * 32)
    assert_failed(r, f"expected {'0' * 32}, got {cifar_archive.md5}")
    assert r.stderr.count("\n") == 1 and r.stdout == ""
    assert list(stage.out.parent.iterdir()) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def assert_dataset(out: Path, n_per_batch: int = 40, n_test: int = 40) -> None:
    """`out` holds exactly the arrays `write_cifar_archive` generated with these sizes."""
    d, want = load_arrays(out), expected_arrays(n_per_batch, n_test)
    assert d.x_train.shape == (5 * n_per_batch, 3, 32, 32) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (n_test, 3, 32, 32) and d.x_test.dtype == np.uint8
    assert d.y_train.dtype == d.y_test.dtype == np.int64
    assert 0 <= d.y_train.min() and d.y_train.max() <= 9
    assert d.classes == want["classes"] and len(d.classes) == 10
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(d, key), want[key], err_msg=key)


def assert_failed(result: Result, phrase: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), result.stderr
    assert phrase in last, last


# --- happy paths -------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["file_uri", "absolute_path", "relative_path"])
def test_local_archive(stage: Stage, cifar_archive, form: str) -> None:
    url = {"file_uri": cifar_archive.path.as_uri(),
           "absolute_path": str(cifar_archive.path),
           "relative_path": os.path.relpath(cifar_archive.path, stage.cwd)}[form]
    r = stage(url=url, md5=cifar_archive.md5)
    assert r.returncode == 0, r.stderr
    assert "200 train + 40 test images, 10 classes" in r.stdout
    assert_dataset(stage.out)
    assert sorted(stage.out.parent.iterdir()) == sorted([stage.out, stage.out.with_suffix(".json")])
    assert stat.S_IMODE(stage.out.stat().st_mode) == 0o666 & ~_umask()


def test_rerun_gives_identical_arrays(stage: Stage, cifar_archive) -> None:
    runs = []
    for _ in range(2):
        assert stage(url=str(cifar_archive.path), md5=cifar_archive.md5).returncode == 0
        runs.append(load_arrays(stage.out))
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(runs[0], key), getattr(runs[1], key))
    assert runs[0].classes == runs[1].classes
    assert sorted(stage.out.parent.iterdir()) == sorted([stage.out, stage.out.with_suffix(".json")])


def test_rerun_replaces_output_of_an_interrupted_run(stage: Stage, cifar_archive) -> None:
    stage.out.write_bytes(b"PK\x03\x04 half of an npz")
    stale = stage.out.parent / ".cifar10.npz.k3j2h1.tmp"
    stale.write_bytes(b"garbage")
    r = stage(url=str(cifar_archive.path), md5=cifar_archive.md5)
    assert r.returncode == 0, r.stderr
    assert_dataset(stage.out)
    assert tree(stage.out.parent) == sorted([stage.out, stage.out.with_suffix(".json"), stale])  # no new temp


# --- failures ----------------------------------------------------------------------------

class Case(NamedTuple):
    data: dict  # overrides of params.yaml's data section
    phrase: str  # expected in the `error:` line


def archive_case(mutate: Callable[[dict], Any], phrase: str) -> Callable[[Path], Case]:
    """A case whose archive is the default one tampered with by `mutate` (MD5 kept valid)."""
    def build(tmp: Path) -> Case:
        path = tmp / "cifar.tar.gz"
        md5 = write_cifar_archive(path, n_per_batch=N, n_test=N, mutate=mutate)
        return Case({"url": str(path), "md5": md5}, phrase)
    return build


def drop(name: str) -> Callable[[dict], None]:
    return lambda m: m.pop(name)


def put(name: str, value: Any) -> Callable[[dict], None]:
    return lambda m: m.__setitem__(name, value)


def edit(name: str, key: str, change: Callable[[Any], Any]) -> Callable[[dict], None]:
    return lambda m: m[name].__setitem__(key, change(m[name][key]))


def python3_protocol2(m: dict) -> None:
    """Re-pickle every batch the way Python 3's pickle writes protocol 2 (bytes via _codecs)."""
    for name, value in m.items():
        if isinstance(value, dict):
            m[name] = pickle.dumps(value, protocol=2)


class Exec:
    """Unpickling this runs `code`: the classic malicious-pickle payload."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple:
        return exec, (self.code,)


def touch_code(path: Path) -> str:
    return f"open({str(path)!r}, 'w').write('pwned')"


def md5_mismatch(tmp: Path) -> Case:
    path = tmp / "cifar.tar.gz"
    md5 = write_cifar_archive(path, n_per_batch=N, n_test=N)
    return Case({"url": path.as_uri(), "md5": "0" * 32}, f"expected {'0' * 32}, got {md5}")


def truncated(tmp: Path) -> Case:
    full, path = tmp / "full.tar.gz", tmp / "cifar.tar.gz"
    write_cifar_archive(full, n_per_batch=N, n_test=N)
    raw = full.read_bytes()
    full.unlink()
    path.write_bytes(raw[: len(raw) // 2])
    return Case({"url": str(path), "md5": hashlib.md5(path.read_bytes()).hexdigest()},
                "is not a readable tar.gz archive (truncated or corrupt?)")


def closed_port_url(tmp: Path) -> Case:
    port = free_port()
    return Case({"url": f"http://127.0.0.1:{port}/cifar.tar.gz", "retries": 1, "timeout_s": 5},
                "set data.url to a local copy")


def malicious_pickle(tmp: Path) -> Case:
    """The payload would write tmp/pwned, which the `tree` check would notice."""
    evil = Exec(touch_code(tmp / "pwned"))
    return archive_case(edit("data_batch_1", "data", lambda _: evil),
                        "data_batch_1 is not a valid CIFAR batch: refused to load")(tmp)


FAILURES = {
    "md5_mismatch": md5_mismatch,
    "truncated": truncated,
    "missing_local_file": lambda tmp: Case({"url": str(tmp / "nope.tar.gz")}, "no such file"),
    "unsupported_scheme": lambda tmp: Case({"url": "ftp://example.org/c.tar.gz"},
                                           "unsupported scheme 'ftp'"),
    "unreachable_url": closed_port_url,
    "missing_batch": archive_case(drop("data_batch_3"), f"lacks the file(s) {ROOT}/data_batch_3"),
    "wrong_shape": archive_case(edit("data_batch_2", "data", lambda d: d[:, :3000]),
                                "data_batch_2: 'data' must be a uint8 array of shape "
                                f"(N, 3072), got uint8 ({N}, 3000)"),
    "wrong_dtype": archive_case(edit("data_batch_1", "data", lambda d: d.astype(np.float32)),
                                "'data' must be a uint8 array"),
    "labels_length": archive_case(edit("test_batch", "labels", lambda y: y[:-1]),
                                  f"test_batch: expected {N} labels, got {N - 1}"),
    "label_out_of_range": archive_case(edit("data_batch_4", "labels", lambda y: [10] + y[1:]),
                                       "data_batch_4: labels must be integers 0-9"),
    "nine_class_names": archive_case(edit("batches.meta", "label_names", lambda n: n[:9]),
                                     "'label_names' must be a list of 10 strings"),
    "batch_not_a_dict": archive_case(put("data_batch_5", [1, 2, 3]),
                                     "data_batch_5 is not a valid CIFAR batch: expected a dict"),
    "batch_raw_garbage": archive_case(put("test_batch", b"\x80\x02 not a pickle"),
                                      "test_batch is not a valid CIFAR batch"),
    "path_traversal": archive_case(put("../evil.txt", b"x"),
                                   f"'{ROOT}/../evil.txt' has an absolute or parent-relative path"),
    "symlink": archive_case(put("evil", TarEntry(tarfile.SYMTYPE, "/etc/passwd")),
                            f"'{ROOT}/evil' is a link or device, refused"),
    "hardlink": archive_case(put("evil", TarEntry(tarfile.LNKTYPE, f"{ROOT}/readme.html")),
                             f"'{ROOT}/evil' is a link or device, refused"),
    "malicious_pickle": malicious_pickle,
}
FAILURES.update({
    "labels_not_flat": archive_case(edit("data_batch_1", "labels", lambda y: [[v] for v in y]),
                                    "data_batch_1"),
    "batch_is_a_directory": archive_case(put("data_batch_2", TarEntry(tarfile.DIRTYPE)),
                                         f"{ROOT}/data_batch_2"),
})


@pytest.mark.parametrize("build", [pytest.param(b, id=k) for k, b in FAILURES.items()])
def test_failure_is_one_line_and_leaves_nothing(stage: Stage, build) -> None:
    case = build(stage.cwd)
    before = tree(stage.cwd)
    t0 = time.monotonic()
    r = stage(**case.data)
    assert time.monotonic() - t0 < 15
    assert_failed(r, case.phrase)
    assert not stage.out.exists()
    assert tree(stage.cwd) == before  # no output, no temp file, nothing the archive planted


def test_malicious_payload_is_live(tmp_path: Path) -> None:
    """Guards the malicious_pickle case: a plain unpickler would run the payload."""
    armed = tmp_path / "armed"
    pickle.loads(py2_pickle({"data": Exec(touch_code(armed))}), encoding="latin1")
    assert armed.read_text() == "pwned"


def test_archive_pickled_by_python3_protocol2(stage: Stage) -> None:
    path = stage.cwd / "cifar.tar.gz"
    md5 = write_cifar_archive(path, n_per_batch=N, n_test=N, mutate=python3_protocol2)
    r = stage(url=str(path), md5=md5)
    assert r.returncode == 0, r.stderr
    assert_dataset(stage.out, N, N)


# --- http(s) -----------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    fail_first: set[str] = set()  # paths answered 503 on their first request
    hits: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        n = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        body = self.files.get(self.path)
        code = 404 if body is None else 503 if self.path in self.fail_first and n == 1 else 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body) if code == 200 else 0))
        self.end_headers()
        if code == 200:
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server(cifar_archive) -> Iterator[str]:
    """A local server: /cifar.tar.gz, /flaky.tar.gz (503 once, then the archive), 404 else."""
    raw = cifar_archive.path.read_bytes()
    handler = type("Handler", (_Handler,), {"files": {"/cifar.tar.gz": raw, "/flaky.tar.gz": raw},
                                            "fail_first": {"/flaky.tar.gz"}, "hits": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    server.hits = handler.hits
    yield server
    server.shutdown()
    server.server_close()


def _url(server: http.server.HTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


@pytest.mark.parametrize("path,retries,hits", [("/cifar.tar.gz", 0, 1), ("/flaky.tar.gz", 1, 2)])
def test_http_download(stage: Stage, cifar_archive, http_server, path, retries, hits) -> None:
    r = stage(url=_url(http_server, path), md5=cifar_archive.md5, retries=retries, timeout_s=5)
    assert r.returncode == 0, r.stderr
    assert_dataset(stage.out)
    assert http_server.hits[path] == hits


@pytest.mark.parametrize("path,retries,phrase", [
    ("/missing.tar.gz", 3, "Not Found"),         # not transient: no retry
    ("/flaky.tar.gz", 0, "Service Unavailable"),  # transient, but no retries allowed
])
def test_http_error(stage: Stage, cifar_archive, http_server, path, retries, phrase) -> None:
    r = stage(url=_url(http_server, path), md5=cifar_archive.md5, retries=retries, timeout_s=5)
    assert_failed(r, f"cannot download {_url(http_server, path)} ({phrase})")
    assert http_server.hits[path] == 1
    assert list(stage.out.parent.iterdir()) == []


def test_a_local_write_error_is_not_retried_as_a_network_error(cifar_archive, http_server,
                                                               tmp_path: Path) -> None:
    """A full disk or an unwritable destination fails at once, named as such, not after
    retries as "offline"."""
    from vitlens.data.fetch import download

    with pytest.raises(DataError, match=f"cannot write the download to {tmp_path}"):
        download(_url(http_server, "/cifar.tar.gz"), tmp_path, retries=3, timeout_s=5,
                 backoff_s=0)  # a directory cannot be opened as a file: IsADirectoryError
    assert http_server.hits["/cifar.tar.gz"] == 1


# --- building blocks, in process ---------------------------------------------------------

def test_atomic_path_publishes_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert list(target.parent.iterdir()) == [target]
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_path_keeps_target_on_failure(tmp_path: Path, exc: type) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(exc), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise exc("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("payload,name", [
    (b"cos\nsystem\n(S'touch pwned'\ntR.", "os.system"),
    (pickle.dumps(os.system, protocol=2), "posix.system"),
    (pickle.dumps(Exec("1"), protocol=4), "builtins.exec"),
    (pickle.dumps(io.BytesIO, protocol=2), "_io.BytesIO"),
])
def test_batch_unpickler_refuses_globals(payload: bytes, name: str) -> None:
    with pytest.raises(pickle.UnpicklingError, match=f"refused to load {name}$"):
        _BatchUnpickler(io.BytesIO(payload), encoding="latin1").load()


def test_batch_unpickler_reads_python2_batches() -> None:
    batch = {"data": np.arange(6, dtype=np.uint8).reshape(2, 3), "labels": [1, 2]}
    got = _BatchUnpickler(io.BytesIO(py2_pickle(batch)), encoding="latin1").load()
    np.testing.assert_array_equal(got["data"], batch["data"])
    assert got["data"].dtype == np.uint8 and got["labels"] == [1, 2]


@pytest.mark.parametrize("url,want", [
    ("https://host/c.tar.gz", None),
    ("http://host/c.tar.gz", None),
    ("file:///tmp/c%20d.tar.gz", Path("/tmp/c d.tar.gz")),
    ("/tmp/c.tar.gz", Path("/tmp/c.tar.gz")),
    ("data/c.tar.gz", Path("data/c.tar.gz")),
    ("~/c.tar.gz", Path.home() / "c.tar.gz"),
])
def test_local_path(url: str, want: Path | None) -> None:
    assert local_path(url) == want


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


_X = np.zeros((4, 3, 32, 32), np.uint8)


@pytest.mark.parametrize("content", [
    pytest.param(b"not an npz", id="text"),
    pytest.param(b"\x93NUMPY", id="npy_magic_only"),
    pytest.param(_npz(x_train=_X), id="npz_missing_keys"),
    pytest.param(b"", id="empty"),
    pytest.param(_npz(x_train=_X)[:600], id="truncated_npz"),
    pytest.param(_npy(_X), id="npy_not_npz"),
])
def test_load_arrays_rejects_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cifar10.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="is not a dataset written by the download stage"):
        load_arrays(path)


def test_load_arrays_missing_file_names_the_stage(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run the download stage first"):
        load_arrays(tmp_path / "nope.npz")


def test_verify_md5_ignores_case(cifar_archive) -> None:
    verify_md5(cifar_archive.path, cifar_archive.md5.upper())
    with pytest.raises(DataError, match="MD5 mismatch"):
        verify_md5(cifar_archive.path, cifar_archive.md5[::-1])


def test_official_archive_must_be_full_size(cifar_archive) -> None:
    assert len(read_archive(cifar_archive.path, official=False).x_train) == 200
    with pytest.raises(DataError, match="must hold 50000 \\+ 10000 images, got 200 \\+ 40"):
        read_archive(cifar_archive.path, official=True)


def test_the_cifar10_record_holds_todays_arrays_byte_for_byte(stage: Stage, cifar_archive) -> None:
    """data.source=cifar10 (the default): every array of the record is byte-identical to what
    the download stage wrote before other sources existed; the record only gained its name,
    source and skipped count."""
    assert stage(url=str(cifar_archive.path), md5=cifar_archive.md5).returncode == 0
    want = expected_arrays()
    with np.load(stage.out) as z:
        assert sorted(z.files) == ["classes", "name", "skipped", "source", "x_test", "x_train",
                                   "y_test", "y_train"]
        for key in ("x_train", "y_train", "x_test", "y_test"):
            got, old = z[key], np.asarray(want[key])
            assert (got.dtype, got.shape, got.tobytes()) == (old.dtype, old.shape, old.tobytes()), key
        assert z["classes"].tolist() == want["classes"] and str(z["name"]) == "cifar10"
