"""The real MLflow server on a free localhost port, over a store the tests made."""
import json
import sys
import urllib.request

import pytest
import torch

from conftest import free_port, serve_and_wait
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
def server(mlflow_store, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vitlens.cli.ui", "--port", str(port)]
    with serve_and_wait(cmd, base + "/health", 90, log=tmp_path / "ui.log") as served:
        yield base, served.log.read_text().splitlines()[0]
    assert served.proc.returncode is not None
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
