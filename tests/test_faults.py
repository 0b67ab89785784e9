"""Faults that lose nothing (docs/faults.md lists each with its test): a full disk or a refused
write while a file is written, SIGTERM in the middle of training, a corrupt input file.

The full disk is real: the temporary file an atomic write goes to is made a link to /dev/full,
so the kernel itself answers ENOSPC to the write.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import copy_store, run_cli, shrink, write_params
from vitlens import io as vio
from vitlens.errors import VitlensError
from vitlens.pipeline.train import run_training
from vitlens.plots.common import save_figure
from vitlens.report.page import write_explorer
from vitlens.train.checkpoint import save_checkpoint

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full (Linux)")


def fail_writes_to(monkeypatch, name: str, error: OSError | None = None) -> None:
    """Atomic writes of files called `name` fail: on /dev/full (a real ENOSPC), or with
    `error` where the temporary file is created (as a directory without write permission
    refuses it)."""
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if not kwargs.get("prefix", "").startswith(f".{name}."):
            return real(*args, **kwargs)
        if error is not None:
            raise error
        fd, tmp = real(*args, **kwargs)
        os.close(fd)
        os.unlink(tmp)
        os.symlink(DEV_FULL, tmp)
        return os.open(tmp, os.O_WRONLY), tmp
    monkeypatch.setattr(vio.tempfile, "mkstemp", mkstemp)


def a_figure():
    import matplotlib.pyplot as plt
    fig = plt.figure()
    fig.gca().plot([0, 1])
    return fig


WRITERS = {
    "checkpoint.pt": lambda p: save_checkpoint({"epoch": 3, "w": torch.zeros(5000)}, p),
    "model.pt": lambda p: vio.save_torch({"w": torch.zeros(5000)}, p),
    "metrics.json": lambda p: vio.write_json(p, {"accuracy": 0.5, "pad": "x" * 100_000}),
    "history.csv": lambda p: vio.write_csv(p, [{"epoch": i, "loss": 0.1} for i in range(9999)]),
    "index.html": lambda p: write_explorer(p, {"meta": {"title": "t", "kind": "run"}, "pad": "x" * 100_000}),
    "confusion.png": lambda p: save_figure(a_figure(), p),
}


@needs_dev_full
@pytest.mark.parametrize("name", list(WRITERS))
def test_a_full_disk_keeps_the_previous_file_and_says_which_in_one_line(name, tmp_path,
                                                                         monkeypatch):
    path = tmp_path / name
    path.write_bytes(b"the previous, whole file")
    fail_writes_to(monkeypatch, name)
    with pytest.raises(VitlensError) as e:
        WRITERS[name](path)
    assert str(e.value) == f"cannot write {path}: [Errno 28] No space left on device"
    assert path.read_bytes() == b"the previous, whole file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left
    monkeypatch.undo()
    WRITERS[name](path)  # and once there is room again, it is written
    assert path.read_bytes() != b"the previous, whole file"


@pytest.mark.parametrize("name", ["model.pt", "metrics.json"])
def test_a_refused_write_keeps_the_previous_file(name, tmp_path, monkeypatch):
    path = tmp_path / name
    path.write_bytes(b"previous")
    fail_writes_to(monkeypatch, name, PermissionError(13, "Permission denied"))
    with pytest.raises(VitlensError, match=f"^cannot write {path}: \\[Errno 13\\] Permission denied$"):
        WRITERS[name](path)
    assert path.read_bytes() == b"previous"


@needs_dev_full
def test_a_full_disk_at_the_model_fails_the_run_and_the_rerun_resumes(
        tiny_params, cifar_npz, tmp_path, monkeypatch, capsys, mlflow_store):
    """The model file cannot be written: the run is FAILED, the old model stays, the last
    checkpoint stays, and the rerun finishes from it without training again."""
    from mlflow.tracking import MlflowClient
    out, ckpt = tmp_path / "models/model.pt", tmp_path / "ckpt.pt"
    out.parent.mkdir()
    out.write_bytes(b"yesterday's model")
    fail_writes_to(monkeypatch, "model.pt")
    params = tiny_params(**{"train.epochs": 2})
    with pytest.raises(VitlensError, match="cannot write .*model.pt: \\[Errno 28\\]"):
        run_training(params, cifar_npz, out, tmp_path / "history.csv", ckpt)
    assert out.read_bytes() == b"yesterday's model"
    run_id = torch.load(ckpt, weights_only=True)["run_id"]
    assert MlflowClient().get_run(run_id).info.status == "FAILED"
    monkeypatch.undo()
    capsys.readouterr()
    run_training(params, cifar_npz, out, tmp_path / "history.csv", ckpt)
    assert f"resuming from {ckpt} after epoch 2" in capsys.readouterr().out
    rec = torch.load(out, weights_only=True)
    assert rec["mlflow_run_id"] == run_id and [r["epoch"] for r in rec["history"]] == [1, 2]
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_a_corrupt_checkpoint_is_ignored_and_training_starts_over(tiny_params, cifar_npz,
                                                                   tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"PK\x03\x04 half a checkpoint")
    run_training(tiny_params(**{"train.epochs": 1}), cifar_npz, tmp_path / "model.pt",
                 tmp_path / "history.csv", ckpt)
    out = capsys.readouterr().out
    assert f"ignoring unreadable checkpoint {ckpt}:" in out and "resuming" not in out
    assert torch.load(tmp_path / "model.pt", weights_only=True)["history"][0]["epoch"] == 1


@pytest.mark.parametrize("cut", [0.5, 0.0])
def test_a_truncated_dataset_names_the_file_and_the_stage_to_rerun(cut, cifar_npz, tmp_path,
                                                                   monkeypatch, capsys,
                                                                   params_dict, train_archive):
    from vitlens.stages import train as train_stage
    data = tmp_path / "cifar10.npz"
    data.write_bytes(cifar_npz.read_bytes()[:int(cut * cifar_npz.stat().st_size)])
    params = write_params(tmp_path / "params.yaml", shrink(params_dict, train_archive))
    code, out, err = run_cli(monkeypatch, capsys, train_stage.main, "--params", params,
                             "--data", data, "--out", tmp_path / "model.pt")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: {data} is not a dataset written by the download stage")
    assert err.endswith("rerun it (dvc repro -f download)\n")
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_a_truncated_model_file_names_it_and_the_stage_to_rerun(command, project, tmp_path,
                                                                monkeypatch, capsys):
    from vitlens.cli import predict, serve
    model = tmp_path / "model.pt"
    whole = (project / "models/model.pt").read_bytes()
    model.write_bytes(whole[:len(whole) // 2])
    picture = tmp_path / "p.png"
    from PIL import Image
    Image.new("RGB", (8, 8)).save(picture)
    args = [picture, "--model", model] if command == "predict" else ["--model", model, "--port", 0]
    code, out, err = run_cli(monkeypatch, capsys, {"predict": predict.main,
                                                   "serve": serve.main}[command], *args)
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {model} is not a readable model file")
    assert err.endswith("rerun the train stage (dvc repro train)\n")


@pytest.mark.slow
def test_sigterm_marks_the_run_killed_keeps_the_checkpoint_and_the_rerun_resumes(
        tmp_path, params_dict, train_archive, cifar_npz, migrated_db):
    """What `dvc queue kill` and job schedulers send, to the real stage process."""
    from mlflow.tracking import MlflowClient
    raw = shrink(params_dict, train_archive)
    raw["train"]["epochs"] = 8
    raw["tracking"]["log_model"] = False
    write_params(tmp_path / "params.yaml", raw)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{copy_store(migrated_db, tmp_path)}",
           "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop("DVC_ROOT", None)
    cmd = [sys.executable, "-m", "vitlens.stages.train", "--data", str(cifar_npz)]
    ckpt = tmp_path / "models/checkpoint.pt"
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert proc.poll() is None and time.monotonic() < deadline, \
            (tmp_path / "train.log").read_text()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, (tmp_path / "train.log").read_text()
    log.close()
    assert (tmp_path / "train.log").read_text().rstrip().endswith("interrupted")
    state = torch.load(ckpt, weights_only=True)
    done, run_id = state["epoch"], state["run_id"]
    assert 1 <= done < 8 and not (tmp_path / "models/model.pt").exists()
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert client.get_run(run_id).info.status == "KILLED"

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from models/checkpoint.pt after epoch {done}" in again.stdout
    rec = torch.load(tmp_path / "models/model.pt", weights_only=True)
    assert rec["mlflow_run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "val/accuracy"))
    assert steps == list(range(1, 9))  # each epoch logged once
    assert [r["epoch"] for r in rec["history"]] == list(range(1, 9))
    assert np.isfinite([r["val_acc"] for r in rec["history"]]).all()


class _KilledMidWrite:
    """An MLflow client whose write gets SIGTERM halfway through, where `dvc queue kill` or a
    scheduler's may land: inside SQLite's transaction."""

    def __init__(self) -> None:
        self.written: list[int] = []

    def log_batch(self, run_id: str, metrics: list = (), params: list = ()) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        self.written.append(len(metrics))


def test_sigterm_in_a_store_write_lets_the_write_finish_then_interrupts(monkeypatch, capsys):
    """Raised inside the write, the interrupt would leave SQLite's write lock with a connection
    nothing rolls back, and the KILLED mark after it would wait on that lock for minutes."""
    from vitlens.tracking.runs import Run
    client, after = _KilledMidWrite(), []

    def main() -> None:
        Run(client, "run").log_metrics({"val/accuracy": 0.5}, step=1)
        after.append("went on")

    code, _, err = run_cli(monkeypatch, capsys, main)
    assert (code, err.strip()) == (130, "interrupted")
    assert client.written == [1]  # the write ran to its end
    assert after == []  # and the stage stopped right after it


def test_running_out_of_memory_is_one_line_that_says_what_needs_less(monkeypatch, capsys):
    def too_big() -> None:
        raise MemoryError("Unable to allocate 93.1 GiB for an array with shape (10000000, 3, 32, 32)")
    code, _, err = run_cli(monkeypatch, capsys, too_big)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("error: out of memory (Unable to allocate 93.1 GiB") and "data.train_subset" in err
