"""The real MLflow server on a free localhost port, over a store the tests made."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from conftest import free_port
from vitlens.pipeline.evaluate import run_evaluation
from vitlens.pipeline.visualize import run_visualize

pytestmark = pytest.mark.slow


def call(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def server(mlflow_store):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vitlens.cli.ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ.copy(), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    first_line = proc.stdout.readline()
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "MLflow server did not come up"
            time.sleep(0.5)
    yield base, first_line
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(base + "/health", timeout=2)


def test_run_is_browsable_through_the_rest_api(project, cifar_npz, server):
    base, first_line = server
    assert f"at {base}" in first_line
    args = (str(project / "params.yaml"), project / "models/model.pt", cifar_npz)
    run_evaluation(*args, project / "reports/eval", project / "reports/metrics.json")
    run_visualize(*args, project / "reports/figures")
    run_id = torch.load(project / "models/model.pt", weights_only=True)["mlflow_run_id"]

    run = call(base, f"/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["model.dim"] == "32"
    history = call(base, f"/api/2.0/mlflow/metrics/get-history?run_id={run_id}"
                         "&metric_key=val/accuracy")["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2, 3]
    files = call(base, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=figures")["files"]
    assert {"figures/attention_overlays.png", "figures/confusion.png"} <= {f["path"] for f in files}
    models = call(base, "/api/2.0/mlflow/logged-models/search",
                  {"experiment_ids": [run["info"]["experiment_id"]],
                   "filter": f"source_run_id = '{run_id}'"})["models"]
    assert len(models) == 1 and models[0]["info"]["name"] == "model"
