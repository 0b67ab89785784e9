"""Shared test helpers: a small, learnable CIFAR-10 archive in the official layout, and params.

The official archive was pickled by Python 2 (protocol 2), where a byte string is a `str` and
is written with the BINSTRING opcodes and arrays name `numpy.core.multiarray._reconstruct`.
`_Py2Pickler` reproduces exactly that, so the fixture exercises the same unpickling path as
the real download.

Torch runs on one thread, in this process and in every process the tests start (the
stages, DVC's, torchrun's, the servers'): the tensors here are tiny, and on a shared
2-core machine a second thread gains nothing and waits at every op's barrier for a core
another process holds (a tiny training epoch took 13 s instead of 0.2 s under load).
Set OMP_NUM_THREADS to choose otherwise.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy or torch is imported

import contextlib  # noqa: E402
import copy  # noqa: E402
import gzip  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import pickle  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable, Iterator, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ROOT = "cifar-10-batches-py"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]

# One distinct mean colour per class (RGB), far apart so a tiny model separates them easily.
_PALETTE = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40],
                     [230, 40, 230], [40, 230, 230], [140, 140, 140], [230, 140, 40],
                     [40, 140, 230], [140, 40, 140]], dtype=np.float32)


class TarEntry(NamedTuple):
    """A member value written as a non-regular entry: `TarEntry(tarfile.SYMTYPE, "/etc/passwd")`
    is a symlink, LNKTYPE a hard link, DIRTYPE a directory."""
    type: bytes
    linkname: str = ""


class Archive(NamedTuple):
    path: Path
    md5: str


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us replace opcodes
    """Protocol 2 as Python 2 wrote it: bytes as BINSTRING, the legacy numpy module name."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def py2_pickle(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 3, 32, 32) uint8: class colour + class-specific stripes + noise."""
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    period = 2 + labels % 5                                   # stripe width by class
    coord = np.where((labels // 5)[:, None, None] == 0, yy, xx)  # rows or columns
    stripes = np.where((coord // period[:, None, None]) % 2 == 0, 25.0, -25.0)
    img = _PALETTE[labels][:, :, None, None] + stripes[:, None] \
        + rng.normal(0, 12, (len(labels), 3, 32, 32))
    return np.clip(img, 0, 255).astype(np.uint8)


def _batch(n: int, label: str, rng: np.random.Generator) -> dict:
    labels = rng.permutation(np.arange(n) % 10)
    return {"batch_label": label,
            "labels": [int(y) for y in labels],
            "data": _images(labels, rng).reshape(n, 3072),
            "filenames": [f"{CLASSES[y]}_s_{rng.integers(10**6):06d}.png" for y in labels]}


def cifar_members(n_per_batch: int = 40, n_test: int = 40, seed: int = 0) -> dict[str, Any]:
    """The archive's members, keyed by name inside `cifar-10-batches-py/`, as Python objects."""
    rng = np.random.default_rng(seed)
    members: dict[str, Any] = {
        name: _batch(n_per_batch, f"training batch {i} of 5", rng)
        for i, name in enumerate(TRAIN_BATCHES, 1)}
    members["test_batch"] = _batch(n_test, "testing batch 1 of 1", rng)
    members["batches.meta"] = {"label_names": list(CLASSES),
                               "num_cases_per_batch": n_per_batch, "num_vis": 3072}
    members["readme.html"] = b"<html><body>test copy of CIFAR-10</body></html>\n"
    return members


def expected_arrays(n_per_batch: int = 40, n_test: int = 40, seed: int = 0) -> dict:
    """What the download stage should produce from `write_cifar_archive` with these arguments."""
    m = cifar_members(n_per_batch, n_test, seed)
    train = [m[n] for n in TRAIN_BATCHES]
    return {"x_train": np.concatenate([b["data"] for b in train]).reshape(-1, 3, 32, 32),
            "y_train": np.concatenate([b["labels"] for b in train]).astype(np.int64),
            "x_test": m["test_batch"]["data"].reshape(-1, 3, 32, 32),
            "y_test": np.array(m["test_batch"]["labels"], dtype=np.int64),
            "classes": list(CLASSES)}


def _tarinfo(name: str, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode = 1_262_304_000, 0o644
    for k, v in attrs.items():
        setattr(info, k, v)
    return info


def write_cifar_archive(path: str | Path, *, n_per_batch: int = 40, n_test: int = 40,
                        seed: int = 0,
                        mutate: Callable[[dict[str, Any]], None] | None = None,
                        members: dict[str, Any] | None = None, root: str = ROOT) -> str:
    """Write a small CIFAR-10 python archive to `path`; return its MD5 (hex).

    `mutate(members)` may edit the member dict in place before writing. Keys are names inside
    `cifar-10-batches-py/` (so `"../evil.txt"` yields `cifar-10-batches-py/../evil.txt`);
    a value that is `bytes` is written raw, a `TarEntry` as that kind of entry, and anything
    else is pickled as Python 2 did (protocol 2). Same arguments give the same bytes.
    `members` and `root` write another archive of that form instead (CIFAR-100's).
    """
    members = cifar_members(n_per_batch, n_test, seed) if members is None else members
    if mutate is not None:
        mutate(members)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_tarinfo(root, type=tarfile.DIRTYPE, mode=0o755))
        for name, value in members.items():
            arcname = f"{root}/{name}"
            if isinstance(value, TarEntry):
                tar.addfile(_tarinfo(arcname, type=value.type, linkname=value.linkname))
                continue
            raw = value if isinstance(value, bytes) else py2_pickle(value)
            tar.addfile(_tarinfo(arcname, size=len(raw)), io.BytesIO(raw))
    Path(path).write_bytes(buf.getvalue())
    return hashlib.md5(buf.getvalue()).hexdigest()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A server process that `serve_and_wait` started, in its own process group, with its
    stdout and stderr in the file `log`."""

    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc, self.log = proc, log

    def output(self, last: int = 3000) -> str:
        """The last `last` characters the process wrote."""
        return self.log.read_text(errors="replace")[-last:]

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM to the whole process group (a server's workers too), SIGKILL if it is
        not gone in `timeout_s`. Safe to call again, and on a process that has exited."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):  # the group is gone
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout_s)
                return
            except subprocess.TimeoutExpired:
                if sig == signal.SIGKILL:
                    raise


@contextlib.contextmanager
def serve_and_wait(cmd: Sequence[str], url: str, timeout_s: float,
                   env: Mapping[str, str] | None = None,
                   log: str | Path | None = None) -> Iterator[Served]:
    """Start the server `cmd` (`env` added to this process's environment) and poll `url`
    until it answers 2xx; yield it as a `Served`. A server that exits, or that does not
    answer within `timeout_s`, fails the test with the end of its output. However the block
    ends, the server's whole process group is stopped. Its output goes to the file `log`,
    or to a temporary file removed afterwards."""
    owned = log is None
    if owned:
        fd, name = tempfile.mkstemp(prefix="server-", suffix=".log")
        os.close(fd)
        log = name
    log = Path(log)
    with open(log, "w") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    served = Served(proc, log)
    try:
        deadline, last = time.monotonic() + timeout_s, "no attempt"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if 200 <= resp.status < 300:
                        break
                    last = f"status {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"status {e.code}"
                e.close()
            except OSError as e:  # refused, reset, timed out
                last = repr(e)
            if proc.poll() is not None:
                pytest.fail(f"{cmd[0]} exited with status {proc.returncode} before {url} "
                            f"answered:\n{served.output()}", pytrace=False)
            if time.monotonic() >= deadline:
                pytest.fail(f"{url} did not answer in {timeout_s:g} s ({last}):\n"
                            f"{served.output()}", pytrace=False)
            time.sleep(0.5)
        yield served
    finally:
        served.stop()
        if owned:
            log.unlink(missing_ok=True)


def registered_uri(run_id: str, client: Any = None, name: str = "vitlens-cifar10") -> str:
    """`models:/NAME/VERSION` of the one model version registered from MLflow run `run_id`,
    which must be registered under `name` (params.yaml's tracking.registered_model)."""
    from mlflow.tracking import MlflowClient

    [version] = (client or MlflowClient()).search_model_versions(f"run_id = '{run_id}'")
    assert version.name == name
    return f"models:/{version.name}/{version.version}"


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
            main: Callable[[], None], *args: Any) -> tuple[int, str, str]:
    """A command's main() in this process, as `python -m` runs it (vitlens.errors.run_main,
    sys.argv): its exit status, stdout and stderr. Far faster than a subprocess: no second
    torch import. The SIGTERM and SIGINT handlers run_main installs are put back."""
    from vitlens.errors import run_main

    monkeypatch.setattr(sys, "argv", [main.__module__, *map(str, args)])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_main(main)
        code = 0
    except SystemExit as e:
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    out, err = capsys.readouterr()
    return code, out, err


def write_params(path: str | Path, raw: dict) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """The default archive (40 images per batch), written once per session. Do not modify."""
    path = tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz"
    return Archive(path, write_cifar_archive(path))


@pytest.fixture(scope="session")
def _params_raw() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


@pytest.fixture
def params_dict(_params_raw: dict) -> Iterator[dict]:
    """The project's real params.yaml as a dict, a fresh copy per test. The session's dict
    must stay as the file has it (a test that shrank it in place failed others that ran
    after it on the same worker): each test that reads it checks so at the end."""
    yield copy.deepcopy(_params_raw)
    assert _params_raw == yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()), \
        "a test changed the session's params dict in place: use params_dict, or copy it"


def shrink(raw: dict, archive: Archive) -> dict:
    """The real params, shrunk so the real code path runs in seconds on a CPU."""
    raw["data"].update(url=str(archive.path), md5=archive.md5, val_size=40, train_subset=0)
    raw["model"].update(dim=32, depth=2, heads=2, mlp_ratio=2.0, drop_path=0.0)
    # fp32: the same numbers on every CPU (auto trains in bf16 on one with AMX).
    raw["train"].update(epochs=3, batch_size=32, warmup_epochs=0.5, lr=0.002, device="cpu",
                        precision="fp32", compile=False, threads=0, nproc=1)
    raw["evaluate"].update(batch_size=64)
    raw["visualize"].update(num_images=4, distance_images=48)
    raw["faithfulness"].update(images=12, steps=8, batch_size=8, bootstrap=200, show_images=2)
    raw["report"].update(images=12, class_images=60, batch_size=16)
    raw["train"].update(snapshot_images=4)
    raw["tracking"].update(experiment="tests", log_model=True)
    return raw


@pytest.fixture(scope="session")
def train_archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """A larger learnable archive (400 training + 100 test images) for training tests."""
    path = tmp_path_factory.mktemp("cifar-train") / "cifar-10-python.tar.gz"
    return Archive(path, write_cifar_archive(path, n_per_batch=80, n_test=100))


@pytest.fixture(scope="session")
def cifar_npz(train_archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitlens.data.cifar import prepare

    out = tmp_path_factory.mktemp("data") / "cifar10.npz"
    prepare(str(train_archive.path), train_archive.md5, out, retries=0, timeout_s=5)
    return out


@pytest.fixture
def tiny_params(params_dict: dict, train_archive: Archive):
    """Validated tiny Params; `tiny_params(**{"train.epochs": 2})` overrides keys."""
    from vitlens.config import parse_params

    def make(**overrides: Any):
        raw = shrink(copy.deepcopy(params_dict), train_archive)
        for key, value in overrides.items():
            section, name = key.split(".")
            raw[section][name] = value
        return parse_params(raw)
    return make


@pytest.fixture(autouse=True)
def _mlflow_global_uri_follows_env() -> Iterator[None]:
    """`runs.client()` points mlflow's process-wide URI at the store it opens, and it
    stays there when the environment changes back: a server a test started and stopped
    would leave later tests in this worker on a dead port (a module's fixture may undo
    its environment after its last test). Each test starts and ends on the environment's."""
    def follow() -> None:
        if "mlflow" in sys.modules:
            sys.modules["mlflow"].set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))
    follow()
    yield
    follow()


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with every migration applied, to copy: creating a store
    costs seconds of migrations, which a server or a stage would otherwise pay on each fresh
    one. test_pipeline.py's first `dvc repro` still creates its store from nothing."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("migrated") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def copy_store(migrated_db: Path, folder: Path) -> Path:
    """`folder/mlflow.db`, a copy of the migrated empty store."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(migrated_db, folder / "mlflow.db"))


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory, migrated_db: Path) -> Path:
    """One SQLite MLflow store for the session, with the test experiment's artifacts inside it."""
    from vitlens.tracking import runs

    root = tmp_path_factory.mktemp("mlflow")
    copy_store(migrated_db, root)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    mp.setenv("DVC_ROOT", str(root))
    runs.experiment_id(runs.client(), "tests")
    mp.delenv("DVC_ROOT")
    yield root
    mp.undo()


@pytest.fixture(scope="session")
def project(tmp_path_factory, _params_raw, train_archive, cifar_npz, mlflow_store):
    """A project directory with params.yaml and a trained tiny model, published (logged and
    registered in MLflow)."""
    from vitlens.config import parse_params
    from vitlens.pipeline.publish import run_publish
    from vitlens.pipeline.train import run_training

    root = tmp_path_factory.mktemp("project")
    raw = shrink(copy.deepcopy(_params_raw), train_archive)
    write_params(root / "params.yaml", raw)
    run_training(parse_params(raw), cifar_npz, root / "models/model.pt",
                 root / "reports/train/history.csv", root / "models/checkpoint.pt")
    run_publish(root / "params.yaml", root / "models/model.pt", cifar_npz, root / "reports/published.json")
    return root


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Playwright), one per test module; skipped without either."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).is_file():
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, path: Path):
    """The written page in a fresh context where every request but file:// is aborted and
    recorded (pg.blocked); pg.requests is every URL the page asked for."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    blocked: list[str] = []

    def block(route):
        blocked.append(route.request.url)
        route.abort()
    ctx.route(re.compile(r"^(?!file:).*"), block)
    pg = ctx.new_page()
    errors: list[str] = []
    requests: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("request", lambda r: requests.append(r.url))
    pg.goto(path.as_uri())
    pg.wait_for_function("window.vitlens && (window.vitlens.ready || window.vitlens.error)")
    pg.blocked, pg.errors, pg.requests = blocked, errors, requests
    return pg
