"""The one-go GPU check runs on a CPU too. Once for real: tiny params, the synthetic archive, as
`PYTHONPATH=src python -m benchmarks.gpucheck` with MLflow and DVC unimportable, the way it
runs from a plain checkout with PyTorch and nothing else. Its bookkeeping (budget, --skip, the
eager/compiled comparison, the search's wiring, the results folder) in this process, with
every phase replaced by one that returns set results after a set number of seconds on a fake
clock."""
import copy
import json
import os
import statistics
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from conftest import PROJECT_ROOT, run_cli, shrink, write_params
from vitlens.device import use_bf16

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("training_curves.png", "input_grid.png", "attention_overlays.png",
           "rollout_vs_heads.png", "attention_distance.png", "confusion.png")
NOTICE = "MLflow not importable"


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory):
    """An environment where `import mlflow` and `import dvc` fail, as with PyTorch alone."""
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
    cmd = [sys.executable, "-m", "benchmarks.gpucheck", "--archive", str(archive), "--md5", md5,
           "--out", str(out), *map(str, extra)]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def full_run(bare_env, tiny_params_file, train_archive, tmp_path_factory):
    out, work = tmp_path_factory.mktemp("gpu-check"), tmp_path_factory.mktemp("work")
    search = tmp_path_factory.mktemp("search") / "search.yaml"
    search.write_text(yaml.safe_dump({"candidates": [
        {"name": "slow-lr", "why": "surely worse", "set": {"train.lr": 1e-6, "train.min_lr": 0}},
        {"name": "shallow", "set": {"model.depth": 1}}]}))
    r = gpu_check(bare_env, train_archive.path, train_archive.md5, out, "--params",
                  tiny_params_file, "--epochs", 2, "--set", "model.dim=32", "--quick-bench",
                  "--search", search, "--search-below", 1.01,  # 1.01: search whatever the default does
                  "--work", work)  # kept: the bench's own JSON is checked against the check's
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), r.stdout, out, work


def assert_history(step, epochs):
    assert step["status"] == "ok" and step["epochs"] == epochs == len(step["history"])
    for row in step["history"]:
        assert 0 < row["train_loss"] < 5 and 0 < row["val_loss"] < 5
        assert 0 <= row["val_acc"] <= 1 and row["epoch_seconds"] > 0
    seconds = [r["epoch_seconds"] for r in step["history"]]
    assert step["train_s"] == pytest.approx(sum(seconds))
    assert step["first_epoch_s"] == seconds[0]
    assert step["median_epoch_s"] == pytest.approx(statistics.median(seconds[1:] or seconds))
    assert step["final_val_acc"] == step["history"][-1]["val_acc"]
    assert step["train_s"] < step["seconds"]  # the epochs are part of the step


@pytest.mark.slow
def test_every_phase_runs_and_is_recorded(full_run):
    result, *_ = full_run
    steps = result["steps"]
    assert list(steps)[:11] == ["prepare", "train_eager", "evaluate_eager", "visualize",
                                "train_compiled", "evaluate_compiled", "profile", "pytest_gpu",
                                "bench", "search_slow-lr", "search_shallow"]
    assert list(steps)[11:] in ([], ["search_best_test"])
    for name, step in steps.items():
        assert step["status"] == "ok", (name, step)
    assert steps["prepare"]["train_images"] == 400
    assert_history(steps["train_eager"], 2)
    assert_history(steps["train_compiled"], 2)
    for name in ("evaluate_eager", "evaluate_compiled"):
        assert steps[name]["num_images"] == 100 and 0.2 < steps[name]["accuracy"] <= 1
    assert result["elapsed_s"] >= sum(s["seconds"] for s in steps.values())


@pytest.mark.slow
def test_params_overrides_and_environment(full_run, tiny_params_file):
    result, *_ = full_run
    p = result["params"]
    assert p["model.dim"] == 32 and p["train.epochs"] == 2
    assert p["train.warmup_epochs"] == pytest.approx(0.4)  # 1 of 5 epochs -> the same share
    assert p["tracking.enabled"] is False and p["train.nproc"] == 1
    env = result["environment"]
    assert env["torch"] and env["device"] == "cpu" and env["gpu"].startswith("none")
    assert env["mlflow"] == "not importable" and "cuda" in env
    ran_bf16 = use_bf16(yaml.safe_load(tiny_params_file.read_text())["train"]["precision"],
                        torch.device("cpu"))
    assert env["precision"] == ("bf16 autocast" if ran_bf16 else "fp32")


@pytest.mark.slow
def test_eager_vs_compiled_pytest_and_bench(full_run):
    result, _, _, work = full_run
    cmp, steps = result["eager_vs_compiled"], result["steps"]
    for name in ("eager", "compiled"):
        assert 0.2 < cmp[name]["test_acc"] <= 1
        train = steps[f"train_{name}"]
        assert cmp[name] == {"train_s": train["train_s"], "median_epoch_s": train["median_epoch_s"],
                             "test_acc": steps[f"evaluate_{name}"]["accuracy"]}
    assert cmp["speedup_train"] == pytest.approx(cmp["eager"]["train_s"] / cmp["compiled"]["train_s"])
    assert cmp["speedup_median_epoch"] == pytest.approx(
        cmp["eager"]["median_epoch_s"] / cmp["compiled"]["median_epoch_s"])
    pt = result["steps"]["pytest_gpu"]
    assert pt["counts"] == {"skipped": 3} and pt["returncode"] == 0  # no CUDA here
    bench, own = result["steps"]["bench"], json.loads((work / "bench.json").read_text())
    assert bench["quick"] and own["config"]["steps"] == 2  # --quick-bench reached the bench
    m, p = own["models"], own["pipeline"]
    assert bench["ratio_ours_over_timm"] == m["ratio_ours_over_timm"] == pytest.approx(
        m["ours"]["images_per_second"] / m["timm"]["images_per_second"])
    assert bench["ratio_ours_over_best_dataloader"] == p["ratio_ours_over_best_dataloader"]
    assert bench["best_dataloader"] == p["best_dataloader"]
    assert bench["epochs_estimate"] == own["epochs"] and "skipped" in own["epochs"]


@pytest.mark.slow
def test_the_profile_and_the_search_are_recorded(full_run):
    result, stdout, *_ = full_run
    prof = result["steps"]["profile"]
    assert [r["mode"] for r in prof["runs"]] == ["eager"] and prof["fastest"] == "eager"
    run = prof["runs"][0]
    assert run["batch_size"] == result["params"]["train.batch_size"] and run["top"]
    assert run["images_per_second"] == pytest.approx(run["batch_size"] / (run["step_ms"] / 1e3))
    assert "profile eager:" in stdout
    s = result["search"]
    assert [r["name"] for r in s["rows"]] == ["default", "slow-lr", "shallow"]
    by_name = {r["name"]: r for r in s["rows"]}
    for row in s["rows"]:  # each row is its training step's
        step = result["steps"]["train_eager" if row["name"] == "default" else f"search_{row['name']}"]
        assert (row["status"], row["val_acc"], row["train_s"]) == (
            "ok", step["final_val_acc"], step["train_s"])
    assert by_name["slow-lr"]["val_acc"] < by_name["default"]["val_acc"]
    assert by_name["slow-lr"]["cost"] == by_name["default"]["cost"] == 1.0  # lr costs nothing
    assert by_name["shallow"]["cost"] < 1 and s["best"] in ("default", "shallow")
    assert s["best"] == max(s["rows"], key=lambda r: r["val_acc"])["name"]
    assert s["best_changes"] == by_name[s["best"]]["changes"]
    assert s["best_test_acc"] == result["steps"].get("search_best_test", result["steps"][
        "evaluate_eager"])["accuracy"]
    assert "search, chosen on validation accuracy:" in stdout and s["table"] in stdout


@pytest.mark.slow
def test_results_folder_is_small_and_complete(full_run):
    result, stdout, out, _ = full_run
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*FIGURES, "gpu_check.json", "gpu_check.log"])
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(PNG)
    assert result["files"]["within_limits"] and len(result["files"]["bytes"]) == 8
    for name in FIGURES:  # written before the count; the JSON and the log grow after it
        assert result["files"]["bytes"][name] == (out / name).stat().st_size
    assert max(result["files"]["bytes"].values()) < 16 * 2**20
    log = (out / "gpu_check.log").read_text()
    assert stdout.count(NOTICE) == 1 and log.count(NOTICE) == 1
    assert "epoch   2/2" in log and "wrote" in log.splitlines()[-1]


class Fakes:
    """The check's phases, each taking `seconds[phase]` on a fake clock (so the budget's
    arithmetic is exact) and returning set results; `fail` names phases that raise. Train
    and evaluate folders: "eager", "compiled" or a search candidate's name."""

    def __init__(self, monkeypatch, out: Path):
        from benchmarks.gpucheck import check, runner

        self.now, self.out, self.calls = 1000.0, out, []
        self.seconds = {"train_eager": 100.0, "train_compiled": 40.0, "evaluate": 10.0,
                        "visualize": 20.0, "profile": 120.0, "pytest": 45.0, "bench": 90.0,
                        "search": 50.0}
        self.val_acc = {"eager": 0.60, "compiled": 0.61}
        self.test_acc = {"eager": 0.50, "compiled": 0.52}
        self.figures = FIGURES[:-1]  # confusion.png is the evaluation's
        self.fail: set[str] = set()
        monkeypatch.setattr(runner, "time", types.SimpleNamespace(perf_counter=lambda: self.now))
        for name in ("train", "evaluate", "visualize", "profile", "pytest", "bench"):
            monkeypatch.setattr(check, f"{name}_phase", getattr(self, name))
        monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails, as when bare

    def _take(self, phase: str, key: str | None = None) -> None:
        self.calls.append((phase, key))
        self.now += self.seconds[key or phase]
        if {phase, key} & self.fail:
            raise RuntimeError(f"{key or phase} exploded")

    def train(self, folder: Path, data: Path) -> dict:
        name = folder.name
        raw = yaml.safe_load((folder / "params.yaml").read_text())
        assert raw["train"]["compile"] is (name == "compiled") and data.is_file()
        self.calls.append(("params", raw))
        self._take("train", f"train_{name}" if name in ("eager", "compiled") else "search")
        s = self.seconds[f"train_{name}" if name in ("eager", "compiled") else "search"] * 0.9
        epochs = raw["train"]["epochs"]
        history = [{"epoch": e + 1, "epoch_seconds": s / epochs, "val_acc": self.val_acc[name]}
                   for e in range(epochs)]
        return {"epochs": epochs, "train_s": s, "first_epoch_s": s / epochs,
                "median_epoch_s": s / epochs / (2 if name == "compiled" else 1),
                "final_val_acc": self.val_acc[name], "history": history}

    def evaluate(self, folder: Path, data: Path, out: Path | None) -> dict:
        self._take("evaluate")
        if out is not None:
            (out / "confusion.png").write_bytes(PNG + b"confusion")
        return {"accuracy": self.test_acc[folder.name], "num_images": 100}

    def visualize(self, folder: Path, data: Path, out: Path) -> dict:
        self._take("visualize")
        for name in self.figures:
            (out / name).write_bytes(PNG + name.encode())
        return {"figures": sorted(self.figures)}

    def profile(self, folder: Path, data: Path) -> dict:
        self._take("profile")
        return {"runs": [{"mode": "eager", "step_ms": 5.0}], "fastest": "eager"}

    def pytest(self, timeout_s: float) -> dict:
        self._take("pytest")
        return {"timeout_s": timeout_s, "returncode": 0, "counts": {"passed": 3}}

    def bench(self, params: Path, work: Path, quick: bool) -> dict:
        self._take("bench")
        return {"quick": quick, "ratio_ours_over_timm": 1.5}


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    return Fakes(monkeypatch, tmp_path / "out")


@pytest.fixture
def fake_check(fakes, monkeypatch, capsys, train_archive, tiny_params_file, tmp_path):
    """`python -m benchmarks.gpucheck ARGS` in this process, over the fake phases: (exit
    status, gpu_check.json, stdout, stderr)."""
    from benchmarks.gpucheck import check

    def run(*args, md5=train_archive.md5):
        code, out, err = run_cli(monkeypatch, capsys, check.main, "--archive", train_archive.path,
                                 "--md5", md5, "--out", fakes.out, "--params", tiny_params_file,
                                 *args)
        path = fakes.out / "gpu_check.json"
        return code, json.loads(path.read_text()) if path.exists() else None, out, err
    return run


def search_file(tmp_path, **changes):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"candidates": [{"name": n, "set": c} for n, c in changes.items()]}))
    return path


ALL = ["prepare", "train_eager", "evaluate_eager", "visualize", "train_compiled",
       "evaluate_compiled", "profile", "pytest_gpu", "bench"]


def test_every_step_is_timed_and_the_phases_get_what_they_need(fake_check, fakes, tmp_path):
    code, result, out, _ = fake_check("--budget-s", 10_000, "--epochs", 3, "--search", "")
    assert code == 0
    steps = result["steps"]
    assert list(steps) == ALL and all(s["status"] == "ok" for s in steps.values())
    expected = {"train_eager": 100, "evaluate_eager": 10, "visualize": 20, "train_compiled": 40,
                "evaluate_compiled": 10, "profile": 120, "pytest_gpu": 45, "bench": 90}
    assert {n: steps[n]["seconds"] for n in expected} == expected
    assert result["elapsed_s"] == pytest.approx(sum(s["seconds"] for s in steps.values()))
    assert steps["prepare"]["train_images"] == 400 and "search" not in result
    trained = [raw for phase, raw in fakes.calls if phase == "params"]
    assert [r["train"]["epochs"] for r in trained] == [3, 3]  # --epochs reaches the phases
    assert trained[0] == {**trained[1], "train": {**trained[1]["train"], "compile": False}}
    assert steps["pytest_gpu"]["timeout_s"] == 10_000 - 300  # the budget left when it starts
    assert not steps["bench"]["quick"]
    assert out.count(NOTICE) == 1 and result["environment"]["mlflow"] == "not importable"
    assert result["params"]["tracking.enabled"] is False


def test_eager_vs_compiled_is_the_ratio_of_the_recorded_times(fake_check):
    _, result, out, _ = fake_check("--budget-s", 10_000, "--search", "")
    cmp = result["eager_vs_compiled"]
    assert cmp["eager"] == {"train_s": 90.0, "median_epoch_s": 90.0 / 5, "test_acc": 0.50}
    assert cmp["compiled"] == {"train_s": 36.0, "median_epoch_s": 36.0 / 5 / 2, "test_acc": 0.52}
    assert cmp["speedup_train"] == pytest.approx(2.5)
    assert cmp["speedup_median_epoch"] == pytest.approx(5.0)
    assert ("eager: 5 epochs in 90.0s (median epoch 18.00s), test accuracy 0.5000; compiled: 5 "
            "epochs in 36.0s (median epoch 3.60s), test accuracy 0.5200") in out


def test_a_failed_training_skips_what_needs_it_and_nothing_else(fake_check, fakes):
    fakes.fail = {"train_compiled"}
    _, result, out, _ = fake_check("--budget-s", 10_000, "--search", "")
    steps = result["steps"]
    assert steps["train_compiled"]["error"] == "RuntimeError: train_compiled exploded"
    assert steps["evaluate_compiled"]["skipped"] == "needs train_compiled, which did not finish"
    assert all(steps[n]["status"] == "ok" for n in ALL if "compiled" not in n)
    assert result["eager_vs_compiled"] == {"eager": {"train_s": 90.0, "median_epoch_s": 18.0,
                                                     "test_acc": 0.5}}  # no speedup
    [line] = [x for x in out.splitlines() if "epochs in" in x]
    assert line.endswith("] eager: 5 epochs in 90.0s (median epoch 18.00s), test accuracy 0.5000")

    fakes.fail = {"train"}  # no training at all
    _, result, out, _ = fake_check("--budget-s", 10_000, "--search", "")
    steps = result["steps"]
    for name in ("evaluate_eager", "visualize"):
        assert steps[name]["skipped"] == "needs train_eager, which did not finish"
    assert result["eager_vs_compiled"] == {} and "no training finished" in out
    assert all(steps[n]["status"] == "ok" for n in ("profile", "pytest_gpu", "bench"))


def test_the_budget_skips_what_would_not_fit(fake_check, fakes, tmp_path):
    """480 s: train 100, evaluate 10, visualize 20, compiled (100 + 60 s of compiling
    expected) 40 + 10, profile (120 expected) 200, pytest 45: 425 s gone, the bench (90
    expected) and a candidate (100 s like the default) do not fit in the 55 left."""
    fakes.seconds["profile"] = 200.0
    _, result, out, _ = fake_check("--budget-s", 480, "--search",
                                   search_file(tmp_path, lr={"train.lr": 0.002}))
    steps = result["steps"]
    assert [n for n, s in steps.items() if s["status"] == "ok"] == ALL[:-1]
    assert steps["bench"]["skipped"] == "needs ~90s, 55s left of --budget-s 480"
    assert steps["search_lr"]["skipped"] == "needs ~100s, 55s left of --budget-s 480"
    assert "skip bench: needs ~90s, 55s left" in out and ("bench", None) not in fakes.calls
    assert result["search"]["best"] == "default" and result["search"]["best_test_acc"] == 0.5


def test_a_small_budget_skips_the_optional_phases(fake_check, fakes):
    """The committed search file, each candidate skipped below with the other optional phases;
    the required ones run whatever the budget."""
    _, result, out, _ = fake_check("--epochs", 1, "--budget-s", 1, "--search-below", 1.01)
    steps = result["steps"]
    assert all(steps[n]["status"] == "ok" for n in ("prepare", "train_eager", "visualize"))
    searched = [n for n in steps if n.startswith("search_")]
    assert len(searched) == len(yaml.safe_load((PROJECT_ROOT / "search.yaml").read_text())[
        "candidates"])
    for name in ("train_compiled", "profile", "pytest_gpu", "bench", *searched):
        assert "left of --budget-s 1" in steps[name]["skipped"], steps[name]
        assert f"skip {name}: needs ~" in out
    assert steps["train_compiled"]["skipped"] == "needs ~160s, 0s left of --budget-s 1"
    assert "train_compiled" in steps["evaluate_compiled"]["skipped"]
    assert out.count(NOTICE) == 1
    assert [c for c in fakes.calls if c[0] != "params"] == [
        ("train", "train_eager"), ("evaluate", None), ("visualize", None)]


def test_skip_names_phases_not_to_run(fake_check, fakes):
    _, result, out, _ = fake_check("--budget-s", 10_000, "--search", "", "--skip", "profile",
                                   "--skip", "bench")
    steps = result["steps"]
    assert steps["profile"] == {"status": "skipped", "skipped": "--skip profile"}
    assert steps["bench"] == {"status": "skipped", "skipped": "--skip bench"}
    assert steps["train_compiled"]["status"] == steps["pytest_gpu"]["status"] == "ok"
    assert ("profile", None) not in fakes.calls and "skip profile: --skip profile" in out


def test_the_search_trains_each_candidate_and_tests_the_winner(fake_check, fakes, tmp_path):
    """The best validation accuracy wins, neither the first nor the last candidate here, and
    only it is tested."""
    fakes.val_acc.update(lr=0.65, wide=0.70, slow=0.62)
    fakes.test_acc["wide"] = 0.66
    path = search_file(tmp_path, lr={"train.lr": 0.002}, wide={"model.dim": 64, "model.heads": 4},
                       slow={"train.lr": 0.0001})
    _, result, out, _ = fake_check("--budget-s", 10_000, "--search", path)
    steps, s = result["steps"], result["search"]
    assert list(steps) == [*ALL, "search_lr", "search_wide", "search_slow", "search_best_test"]
    trained = [raw for phase, raw in fakes.calls if phase == "params"]
    base, lr, wide = trained[0], trained[2], trained[3]  # [1] is the compiled one
    assert lr == {**base, "train": {**base["train"], "lr": 0.002}}
    assert wide == {**base, "model": {**base["model"], "dim": 64, "heads": 4}}
    assert [r["name"] for r in s["rows"]] == ["default", "lr", "wide", "slow"] and s["best"] == "wide"
    assert [r["val_acc"] for r in s["rows"]] == [0.60, 0.65, 0.70, 0.62]
    assert steps["search_best_test"]["accuracy"] == s["best_test_acc"] == 0.66  # wide's own
    assert s["adopt"] == "dvc exp run -S model.dim=64 -S model.heads=4" and s["table"] in out


def test_a_default_at_the_bar_is_not_searched(fake_check, tmp_path):
    path = search_file(tmp_path, lr={"train.lr": 0.002})
    _, result, out, _ = fake_check("--budget-s", 10_000, "--search", path, "--search-below", 0.5)
    assert not [n for n in result["steps"] if n.startswith("search_")]
    assert result["search"]["skipped"] == "the default's test accuracy 0.5000 is at least 0.5"


def test_the_results_folder_is_counted(fake_check, fakes):
    _, result, out, _ = fake_check("--budget-s", 10_000, "--search", "")
    files = result["files"]
    assert sorted(files["bytes"]) == sorted([*FIGURES, "gpu_check.json", "gpu_check.log"])
    assert files["bytes"]["confusion.png"] == len(PNG + b"confusion") and files["within_limits"]
    fakes.figures = (*FIGURES[:-1], "extra.png")  # a ninth file
    _, result, out, _ = fake_check("--budget-s", 10_000, "--search", "")
    assert not result["files"]["within_limits"] and "9 files" in out and "OVER the limits" in out


def test_a_bad_md5_stops_with_one_line(fake_check, fakes):
    code, result, out, err = fake_check(md5="0" * 32)
    assert code == 1
    assert err.startswith("error: MD5 mismatch") and err.count("\n") == 1, err
    assert "Traceback" not in out + err
    steps = result["steps"]
    assert list(steps) == ["prepare"] and fakes.calls == []  # nothing trained
    assert steps["prepare"]["status"] == "failed" and "MD5" in steps["prepare"]["error"]
    assert sorted(p.name for p in fakes.out.iterdir()) == ["gpu_check.json", "gpu_check.log"]


def test_a_failed_step_is_recorded_and_the_rest_still_run(tmp_path, capsys):
    from benchmarks.gpucheck.runner import Check
    from vitlens.errors import VitlensError

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
    from benchmarks.gpucheck.check import check_params, parse_args
    from vitlens.errors import VitlensError

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
    from benchmarks.gpucheck import check as gpu_check

    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(gpu_check.Skip, match="pytest not installed"):
        gpu_check.pytest_phase(60)


def test_the_bench_phase_reports_the_benchs_own_numbers(monkeypatch, tmp_path):
    """Set bench results in, the same ratios out, and the epoch estimate without its
    per-step seconds (they stay in the work folder)."""
    from benchmarks import bench
    from benchmarks.gpucheck import check as gpu_check

    seen = {}

    def fake_main(argv):
        seen["argv"] = argv
        Path(argv[argv.index("--out") + 1]).write_text(json.dumps({
            "models": {"ratio_ours_over_timm": 1.25, "paired_ratio_ours_over_timm": 1.2},
            "pipeline": {"ratio_ours_over_best_dataloader": 20.5,
                         "paired_ratio_ours_over_best_dataloader": 19.0,
                         "best_dataloader": "dataloader_tensor_2_workers"},
            "epochs": {"train_images": 45_000, "eager": {"epoch_s": 9.5, "seconds": [0.1, 0.2]}}}))
    monkeypatch.setattr(bench, "main", fake_main)
    r = gpu_check.bench_phase(tmp_path / "params.yaml", tmp_path, quick=True)
    assert seen["argv"] == ["--params", str(tmp_path / "params.yaml"), "--out",
                            str(tmp_path / "bench.json"), "--quick"]
    assert r == {"quick": True, "ratio_ours_over_timm": 1.25, "paired_ratio_ours_over_timm": 1.2,
                 "ratio_ours_over_best_dataloader": 20.5,
                 "paired_ratio_ours_over_best_dataloader": 19.0,
                 "best_dataloader": "dataloader_tensor_2_workers",
                 "epochs_estimate": {"train_images": 45_000, "eager": {"epoch_s": 9.5}}}


@pytest.mark.parametrize("precision,recorded", [("bf16", "bf16 autocast"), ("fp32", "fp32")])
def test_the_environment_records_the_precision_the_params_ask(fake_check, precision, recorded):
    _, result, _, _ = fake_check("--budget-s", 10_000, "--search", "", "--skip", "bench",
                                 "--set", f"train.precision={precision}")
    assert result["environment"]["precision"] == recorded
    assert result["params"]["train.precision"] == precision


def test_the_default_budget_is_an_hour(train_archive):
    from benchmarks.gpucheck.check import parse_args

    args = parse_args(["--archive", str(train_archive.path), "--md5", train_archive.md5])
    assert args.budget_s == 3600
