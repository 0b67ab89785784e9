"""The one-go GPU check runs on a CPU too: tiny params, the synthetic archive, as a subprocess
with PYTHONPATH=src and MLflow and DVC unimportable, the way it runs on a bare GPU machine."""
import copy
import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from conftest import PROJECT_ROOT, shrink, write_params

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("training_curves.png", "input_grid.png", "attention_overlays.png",
           "rollout_vs_heads.png", "attention_distance.png", "confusion.png")
NOTICE = "MLflow not importable"


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory):
    """An environment where `import mlflow` and `import dvc` fail, as on a bare GPU machine."""
    fake = tmp_path_factory.mktemp("no-mlflow")
    for name in ("mlflow", "dvc"):
        (fake / name).mkdir()
        (fake / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), "src"]),
            "MLFLOW_TRACKING_URI": "", "DVC_ROOT": ""}


@pytest.fixture(scope="module")
def tiny_params_file(tmp_path_factory, _params_raw, train_archive):
    """The real params shrunk, but model.dim and the epochs left for --set and --epochs."""
    raw = shrink(copy.deepcopy(_params_raw), train_archive)
    raw["model"]["dim"] = 48
    raw["train"].update(epochs=5, warmup_epochs=1.0, threads=1)  # 1: steady on a busy CPU
    return write_params(tmp_path_factory.mktemp("params") / "params.yaml", raw)


def gpu_check(env, archive, md5, out, *extra, timeout=300):
    cmd = [sys.executable, "-m", "vitlens.gpucheck.check", "--archive", str(archive), "--md5", md5,
           "--out", str(out), *map(str, extra)]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def full_run(bare_env, tiny_params_file, train_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    search = tmp_path_factory.mktemp("search") / "search.yaml"
    search.write_text(yaml.safe_dump({"candidates": [
        {"name": "slow-lr", "why": "surely worse", "set": {"train.lr": 1e-6, "train.min_lr": 0}},
        {"name": "shallow", "set": {"model.depth": 1}}]}))
    r = gpu_check(bare_env, train_archive.path, train_archive.md5, out, "--params",
                  tiny_params_file, "--epochs", 2, "--set", "model.dim=32", "--quick-bench",
                  "--search", search, "--search-below", 1.01)  # 1.01: search whatever the default does
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), r.stdout, out


def assert_history(step, epochs):
    assert step["status"] == "ok" and step["epochs"] == epochs == len(step["history"])
    for row in step["history"]:
        assert 0 < row["train_loss"] < 5 and 0 < row["val_loss"] < 5
        assert 0 <= row["val_acc"] <= 1 and row["epoch_seconds"] > 0
    assert step["train_s"] == pytest.approx(sum(r["epoch_seconds"] for r in step["history"]))


@pytest.mark.slow
def test_every_phase_runs_and_is_recorded(full_run):
    result, _, _ = full_run
    steps = result["steps"]
    assert list(steps)[:11] == ["prepare", "train_eager", "evaluate_eager", "visualize",
                                "train_compiled", "evaluate_compiled", "profile", "pytest_gpu",
                                "bench", "search_slow-lr", "search_shallow"]
    assert list(steps)[11:] in ([], ["search_best_test"])
    for name, step in steps.items():
        assert step["status"] == "ok", (name, step)
        assert step["seconds"] > 0
    assert steps["prepare"]["train_images"] == 400
    assert_history(steps["train_eager"], 2)
    assert_history(steps["train_compiled"], 2)
    for name in ("evaluate_eager", "evaluate_compiled"):
        assert steps[name]["num_images"] == 100 and 0.2 < steps[name]["accuracy"] <= 1
    assert result["elapsed_s"] >= sum(s["seconds"] for s in steps.values())


@pytest.mark.slow
def test_params_overrides_and_environment(full_run):
    result, _, _ = full_run
    p = result["params"]
    assert p["model.dim"] == 32 and p["train.epochs"] == 2
    assert p["train.warmup_epochs"] == pytest.approx(0.4)  # 1 of 5 epochs -> the same share
    assert p["tracking.enabled"] is False and p["train.nproc"] == 1
    env = result["environment"]
    assert env["torch"] and env["device"] == "cpu" and env["gpu"].startswith("none")
    assert env["mlflow"] == "not importable" and "cuda" in env


@pytest.mark.slow
def test_eager_vs_compiled_pytest_and_bench(full_run):
    result, _, _ = full_run
    cmp = result["eager_vs_compiled"]
    for name in ("eager", "compiled"):
        assert cmp[name]["train_s"] > 0 and 0.2 < cmp[name]["test_acc"] <= 1
    assert cmp["speedup_train"] > 0 and math.isfinite(cmp["speedup_median_epoch"])
    pt = result["steps"]["pytest_gpu"]
    assert pt["counts"] == {"skipped": 3} and pt["returncode"] == 0  # no CUDA here
    bench = result["steps"]["bench"]
    assert bench["quick"] and bench["ratio_ours_over_timm"] > 0
    assert bench["ratio_ours_over_best_dataloader"] > 0 and "skipped" in bench["epochs_estimate"]


@pytest.mark.slow
def test_the_profile_and_the_search_are_recorded(full_run):
    result, stdout, _ = full_run
    prof = result["steps"]["profile"]
    assert [r["mode"] for r in prof["runs"]] == ["eager"] and prof["fastest"] == "eager"
    assert prof["runs"][0]["step_ms"] > 0 and prof["runs"][0]["top"]
    assert "profile eager:" in stdout
    s = result["search"]
    assert [r["name"] for r in s["rows"]] == ["default", "slow-lr", "shallow"]
    by_name = {r["name"]: r for r in s["rows"]}
    assert by_name["slow-lr"]["val_acc"] < by_name["default"]["val_acc"]
    assert by_name["shallow"]["cost"] < 1 and s["best"] in ("default", "shallow")
    assert s["best_test_acc"] == result["steps"].get("search_best_test", result["steps"][
        "evaluate_eager"])["accuracy"]
    assert "search, chosen on validation accuracy:" in stdout and s["table"] in stdout


@pytest.mark.slow
def test_results_folder_is_small_and_complete(full_run):
    result, stdout, out = full_run
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*FIGURES, "gpu_check.json", "gpu_check.log"])
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(PNG)
    assert result["files"]["within_limits"] and len(result["files"]["bytes"]) == 8
    assert max(result["files"]["bytes"].values()) < 16 * 2**20
    log = (out / "gpu_check.log").read_text()
    assert stdout.count(NOTICE) == 1 and log.count(NOTICE) == 1
    assert "epoch   2/2" in log and "wrote" in log.splitlines()[-1]


def test_a_small_budget_skips_the_optional_phases(bare_env, tiny_params_file, train_archive,
                                                  tmp_path):
    r = gpu_check(bare_env, train_archive.path, train_archive.md5, tmp_path, "--params",
                  tiny_params_file, "--epochs", 1, "--budget-s", 1, "--search-below", 1.01)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert all(steps[n]["status"] == "ok" for n in ("prepare", "train_eager", "visualize"))
    searched = [n for n in steps if n.startswith("search_")]
    assert len(searched) == len(yaml.safe_load((PROJECT_ROOT / "search.yaml").read_text())[
        "candidates"])  # the committed search file, each candidate skipped below
    for name in ("train_compiled", "profile", "pytest_gpu", "bench", *searched):
        assert "left of --budget-s 1" in steps[name]["skipped"], steps[name]
        assert f"skip {name}: needs ~" in r.stdout
    assert "train_compiled" in steps["evaluate_compiled"]["skipped"]
    assert r.stdout.count(NOTICE) == 1


def test_a_bad_md5_stops_with_one_line(bare_env, train_archive, tmp_path):
    r = gpu_check(bare_env, train_archive.path, "0" * 32, tmp_path, timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("error: MD5 mismatch") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert steps["prepare"]["status"] == "failed" and "MD5" in steps["prepare"]["error"]
    assert not (tmp_path / "cifar10.npz").exists()


def test_a_failed_step_is_recorded_and_the_rest_still_run(tmp_path, capsys):
    from vitlens.errors import VitlensError
    from vitlens.gpucheck.runner import Check

    path = tmp_path / "check.json"
    check = Check(path, 600, optional=["opt"], skip=[])

    def broken():
        raise RuntimeError("kernel exploded")

    check.step("first", broken)
    check.step("second", lambda: {"value": 2})
    check.step("third", lambda: {}, needs=("first",))
    check.step("opt", lambda: {}, estimate=10_000)
    with pytest.raises(KeyboardInterrupt):  # a timeout's SIGTERM, as run_main turns it
        check.step("killed", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(VitlensError):
        check.step("fatal", lambda: (_ for _ in ()).throw(VitlensError("bad archive")), fatal=True)
    steps = json.loads(path.read_text())["steps"]
    assert steps["first"]["status"] == "failed" and "RuntimeError: kernel exploded" in steps["first"]["error"]
    assert steps["second"] == {"status": "ok", "value": 2, "seconds": steps["second"]["seconds"]}
    assert steps["third"]["skipped"] == "needs first, which did not finish"
    assert steps["opt"]["skipped"].startswith("needs ~10000s")
    assert steps["killed"]["status"] == "interrupted"
    assert steps["fatal"] == {"status": "failed", "error": "bad archive", "seconds": steps["fatal"]["seconds"]}
    assert "Traceback" in capsys.readouterr().out  # the broken step's, for the log


def test_set_and_epochs_overrides_are_validated(train_archive, tiny_params_file):
    from vitlens.errors import VitlensError
    from vitlens.gpucheck.check import check_params, parse_args

    def params(*extra, tracking_on=True):
        return check_params(parse_args(["--archive", str(train_archive.path), "--md5",
                                        train_archive.md5, "--params", str(tiny_params_file),
                                        *extra]), tracking_on)

    raw = params("--set", "train.lr=3e-4", "--epochs", "10", "--set", "train.nproc=4")
    assert raw["train"]["lr"] == 3e-4 and raw["train"]["epochs"] == 10
    assert raw["train"]["warmup_epochs"] == 2.0 and raw["train"]["nproc"] == 1
    assert raw["data"]["url"] == str(train_archive.path) and raw["tracking"]["enabled"]
    assert not params(tracking_on=False)["tracking"]["enabled"]
    for bad, msg in [("model.dim", "section.key=value"), ("nosuch.x=1", "known section"),
                     ("model.nosuch=1", "not a known key"), ("model.dim=abc", "an integer")]:
        with pytest.raises(VitlensError, match=msg):
            params("--set", bad)


def test_a_missing_pytest_is_a_skip_not_a_failure(monkeypatch):
    from vitlens.gpucheck import check as gpu_check

    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(gpu_check.Skip, match="pytest not installed"):
        gpu_check.pytest_phase(60)
