"""The train stage under torchrun: 2 CPU processes with gloo."""
import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import shrink, write_params
from vitlens.config import parse_params
from vitlens.pipeline.train import run_training
from vitlens.tracking.runs import tracking_uri

pytestmark = pytest.mark.slow
EPOCHS = 4


def tiny_raw(raw, archive, **train):
    raw = shrink(copy.deepcopy(raw), archive)
    raw["train"].update({"epochs": EPOCHS, "nproc": 2, **train})
    raw["tracking"]["log_model"] = False
    return raw


def stage_cmd(root, cifar_npz):
    return [sys.executable, "-m", "vitlens.stages.train", "--params", str(root / "params.yaml"),
            "--data", str(cifar_npz), "--out", str(root / "model.pt"),
            "--history", str(root / "history.csv"), "--checkpoint", str(root / "ckpt.pt")]


def run_stage(root, cifar_npz):
    t0 = time.perf_counter()
    r = subprocess.run(stage_cmd(root, cifar_npz), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr, time.perf_counter() - t0


def kill_all_with(text: str) -> None:
    """SIGKILL every process whose command line holds `text` (torchrun's workers do not
    share its process group)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def val_accs(path):
    return [row["val_acc"] for row in torch.load(path, weights_only=True)["history"]]


def history(path, key):
    return [row[key] for row in torch.load(path, weights_only=True)["history"]]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, _params_raw, train_archive, cifar_npz, mlflow_store):
    """One train stage under torchrun, 2 gloo processes, without augmentation or dropout
    (whose seeds differ per rank): its folder, output, seconds, and the runs it added."""
    multi = tmp_path_factory.mktemp("ddp")
    raw = tiny_raw(_params_raw, train_archive, crop_padding=0, flip=False)
    write_params(multi / "params.yaml", raw)
    client = MlflowClient(tracking_uri())
    exp_id = client.get_experiment_by_name("tests").experiment_id
    before = len(client.search_runs([exp_id]))
    out, seconds = run_stage(multi, cifar_npz)
    return multi, raw, out, seconds, len(client.search_runs([exp_id])) - before


def test_two_gloo_processes_match_a_single_process(ddp_run, cifar_npz, tmp_path):
    """Two processes that each take half of every batch and average gradients train the
    same model as one."""
    multi, raw, out, ddp_s, new_runs = ddp_run
    single = tmp_path / "single"
    single.mkdir()
    raw = copy.deepcopy(raw)
    raw["train"]["nproc"] = 1
    t0 = time.perf_counter()
    run_training(parse_params(raw), cifar_npz, single / "model.pt", single / "history.csv",
                 single / "ckpt.pt")
    single_s = time.perf_counter() - t0
    print(f"\n{EPOCHS} epochs: single process {single_s:.1f}s, 2 gloo processes {ddp_s:.1f}s")
    assert out.count("wrote ") == 1  # rank 0 alone writes
    assert out.count("training in 2 processes under torchrun (DistributedDataParallel, gloo") == 1
    assert new_runs == 1  # and alone touches the store
    assert sorted(p.name for p in multi.iterdir()) == ["history.csv", "model.pt", "params.yaml"]
    for key in ("train_loss", "val_loss", "val_acc"):
        a, b = history(single / "model.pt", key), history(multi / "model.pt", key)
        assert len(b) == EPOCHS
        assert b == pytest.approx(a, rel=1e-4), (key, a, b)


def test_ddp_resumes_from_its_checkpoint(ddp_run, cifar_npz, tmp_path):
    """Killed after its first checkpoint and run again, a DDP training ends with the model
    of the uninterrupted one (ddp_run, the same params)."""
    straight, raw, *_ = ddp_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    raw = copy.deepcopy(raw)
    raw["tracking"]["enabled"] = False
    write_params(resumed / "params.yaml", raw)
    proc = subprocess.Popen(stage_cmd(resumed, cifar_npz), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (resumed / "ckpt.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    kill_all_with(str(resumed / "ckpt.pt"))  # torchrun and its workers, as a crash would
    proc.wait()
    assert not (resumed / "model.pt").exists()
    out, _ = run_stage(resumed, cifar_npz)
    assert "resuming from" in out
    assert len(history(resumed / "model.pt", "val_acc")) == EPOCHS
    assert val_accs(resumed / "model.pt") == val_accs(straight / "model.pt")
