import dataclasses
import math
import re
import time

import pytest
import torch
import torch._dynamo.utils
import yaml

from vitlens.data.imageset import load_arrays
from vitlens.errors import VitlensError
from vitlens.model.trained import load_trained
from vitlens.pipeline.publish import run_publish
from vitlens.pipeline.train import run_training
from vitlens.train import checkpoint, loop, step

TIMING = ("epoch_seconds", "images_per_second")


def metrics_only(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def fit(params, cifar_npz, tmp_path, state=None):
    return loop.train(params, load_arrays(cifar_npz), checkpoint=tmp_path / "ckpt.pt",
                          state=state)


def stage(params, cifar_npz, tmp_path):
    out = tmp_path / "models" / "model.pt"
    run_training(params, cifar_npz, out, tmp_path / "history.csv", tmp_path / "ckpt.pt")
    return torch.load(out, weights_only=True)


def test_tiny_run_learns(tiny_params, cifar_npz, tmp_path):
    h = fit(tiny_params(**{"train.epochs": 4}), cifar_npz, tmp_path).history
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["val_acc"] > 0.3  # 10 classes: chance is 0.1
    assert all(r["images_per_second"] > 0 and r["lr"] > 0 for r in h)


def test_compile_takes_the_configured_mode(tiny_params, cifar_npz, tmp_path, monkeypatch):
    modes = []

    def fake_compile(fn, *, mode):  # the real one would spend a minute compiling on a CPU
        modes.append(mode)
        return fn
    monkeypatch.setattr(loop.torch, "compile", fake_compile)
    fit(tiny_params(**{"train.epochs": 1}), cifar_npz, tmp_path / "eager")
    fit(tiny_params(**{"train.epochs": 1, "train.compile": True,
                       "train.compile_mode": "reduce-overhead"}), cifar_npz, tmp_path / "graphs")
    assert modes == ["reduce-overhead"]


@pytest.mark.slow
def test_a_compiled_run_trains_as_the_eager_one_and_saves_plain_weights(tiny_params, cifar_npz,
                                                                       tmp_path):
    """Real torch.compile on the CPU, with the moving average on: fp32, so the two runs agree
    to rounding, and the saved weights are the model's own names (no compile wrapper)."""
    p = {"tracking.enabled": False, "train.epochs": 1, "train.ema": 0.9}
    eager = stage(tiny_params(**p), cifar_npz, tmp_path / "eager")
    torch.compiler.reset()
    torch._dynamo.utils.counters.clear()
    compiled = stage(tiny_params(**p, **{"train.compile": True}), cifar_npz, tmp_path / "compiled")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert compiled["state_dict"].keys() == eager["state_dict"].keys()
    for k, v in eager["state_dict"].items():
        assert torch.allclose(compiled["state_dict"][k], v, rtol=1e-3, atol=1e-4), k
    for a, b in zip(metrics_only(eager["history"]), metrics_only(compiled["history"])):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)


def test_lr_schedule_warms_up_then_decays():
    lrs = [step.lr_at(s, total=100, warmup=10, lr=1.0, min_lr=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_lr_schedule_without_warmup_starts_at_the_peak():
    lrs = [step.lr_at(s, total=50, warmup=0, lr=1.0, min_lr=0.0) for s in range(51)]
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[25] == pytest.approx(0.5)  # cosine half way
    assert all(a > b for a, b in zip(lrs[:50], lrs[1:50]))
    assert lrs[50] == pytest.approx(0.0, abs=1e-12)


def test_same_params_same_metrics(tiny_params, cifar_npz, tmp_path):
    p = tiny_params(**{"model.dropout": 0.1, "model.drop_path": 0.1})
    a = fit(p, cifar_npz, tmp_path / "a")
    b = fit(p, cifar_npz, tmp_path / "b")
    assert metrics_only(a.history) == metrics_only(b.history)


class Crash(KeyboardInterrupt):
    pass


def crash_after(monkeypatch, epochs: int):
    """Let `epochs` checkpoints be written, then die as a kill would."""
    real = checkpoint.save_checkpoint
    calls = []

    def save_then_maybe_die(state, path):
        real(state, path)
        calls.append(state["epoch"])
        if len(calls) == epochs:
            raise Crash()
    monkeypatch.setattr(loop, "save_checkpoint", save_then_maybe_die)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_after_crash_matches_uninterrupted_run(tiny_params, cifar_npz, tmp_path,
                                                      monkeypatch, ema):
    """The saved weights, the moving average's when train.ema is on, come out the same."""
    p = tiny_params(**{"tracking.enabled": False, "model.dropout": 0.1, "train.ema": ema})
    straight = stage(p, cifar_npz, tmp_path / "straight")

    crash_after(monkeypatch, 2)
    with pytest.raises(Crash):
        stage(p, cifar_npz, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "models" / "model.pt").exists()
    assert checkpoint.load_checkpoint(tmp_path / "resumed" / "ckpt.pt",
                                    checkpoint.checkpoint_digest(p))["epoch"] == 2
    monkeypatch.undo()
    resumed = stage(p, cifar_npz, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "ckpt.pt").exists()
    assert metrics_only(resumed["history"]) == metrics_only(straight["history"])
    for k, v in straight["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


def test_checkpoint_from_other_params_is_not_resumed(tiny_params, cifar_npz, tmp_path,
                                                     monkeypatch, capsys):
    p = tiny_params(**{"tracking.enabled": False})
    crash_after(monkeypatch, 1)
    with pytest.raises(Crash):
        stage(p, cifar_npz, tmp_path)
    monkeypatch.undo()
    other = tiny_params(**{"tracking.enabled": False, "train.lr": 0.001})
    assert checkpoint.load_checkpoint(tmp_path / "ckpt.pt", checkpoint.checkpoint_digest(other)) is None
    assert "other params" in capsys.readouterr().out
    rec = stage(other, cifar_npz, tmp_path)
    fresh = stage(other, cifar_npz, tmp_path / "fresh")
    assert metrics_only(rec["history"]) == metrics_only(fresh["history"])


def test_model_file_rebuilds_the_model(tiny_params, cifar_npz, tmp_path):
    p = tiny_params(**{"tracking.enabled": False, "train.epochs": 1})
    stage(p, cifar_npz, tmp_path)
    trained = load_trained(tmp_path / "models" / "model.pt", "cpu")
    model, rec = trained.vit, trained.record
    assert rec["classes"][0] == "airplane" and len(rec["mean"]) == 3
    assert rec["params"]["model"]["dim"] == 32 and rec["model_config"]["depth"] == 2
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_history_csv_has_every_epoch(tiny_params, cifar_npz, tmp_path):
    stage(tiny_params(**{"tracking.enabled": False}), cifar_npz, tmp_path)
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0] == ("epoch,train_loss,train_acc,val_loss,val_acc,lr,epoch_seconds,"
                        "images_per_second")
    assert len(lines) == 4


def nan_head(monkeypatch):
    real = loop.build_model

    def build(cfg, n):
        model = real(cfg, n)
        torch.nn.init.constant_(model.head.bias, math.nan)
        return model
    monkeypatch.setattr(loop, "build_model", build)


def test_nan_loss_stops_and_marks_run_failed(tiny_params, cifar_npz, tmp_path, monkeypatch,
                                             mlflow_store):
    from mlflow.tracking import MlflowClient
    nan_head(monkeypatch)
    with pytest.raises(VitlensError, match="NaN or infinite"):
        stage(tiny_params(), cifar_npz, tmp_path)
    assert not (tmp_path / "models" / "model.pt").exists()
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("tests").experiment_id],
                                      order_by=["attributes.start_time DESC"], max_results=1)
    assert runs[0].info.status == "FAILED"


def test_interrupt_marks_run_killed(tiny_params, cifar_npz, tmp_path, monkeypatch,
                                    mlflow_store):
    from mlflow.tracking import MlflowClient
    crash_after(monkeypatch, 1)
    with pytest.raises(Crash):
        stage(tiny_params(), cifar_npz, tmp_path)
    client = MlflowClient()
    run_id = torch.load(tmp_path / "ckpt.pt", weights_only=True)["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    monkeypatch.undo()
    rec = stage(tiny_params(), cifar_npz, tmp_path)
    assert rec["mlflow_run_id"] == run_id  # the resumed training continues the same run
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "val/accuracy")]
    assert sorted(steps) == [1, 2, 3]


@pytest.mark.parametrize("precision,line", [("bf16", "precision: bf16 autocast on cpu"),
                                            ("fp32", "precision: fp32 on cpu")])
def test_the_run_trains_in_the_precision_asked_and_says_so(tiny_params, cifar_npz, tmp_path,
                                                          mlflow_store, monkeypatch, capsys,
                                                          precision, line):
    from mlflow.tracking import MlflowClient
    dtypes = []
    real_step = loop.optimizer_step

    def spy(*args, **kwargs):
        loss, logits = real_step(*args, **kwargs)
        dtypes.append(logits.dtype)
        return loss, logits
    monkeypatch.setattr(loop, "optimizer_step", spy)
    rec = stage(tiny_params(**{"train.precision": precision, "train.epochs": 1}), cifar_npz, tmp_path)
    assert line in capsys.readouterr().out
    assert set(dtypes) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert MlflowClient().get_run(rec["mlflow_run_id"]).data.tags["precision"] == precision


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_validation_runs_in_the_precision_that_trains(tiny_params, cifar_npz, tmp_path, precision):
    from vitlens.train.evaluation import evaluate_logits, split_logits
    params = tiny_params(**{"train.precision": precision, "train.epochs": 1})
    data = load_arrays(cifar_npz)
    r = loop.train(params, data, checkpoint=tmp_path / "ckpt.pt")
    _, val, _ = loop.device_splits(params, data, r.device)

    def loss(bf16):
        return evaluate_logits(split_logits(r.model, val, r.norm, 16, r.device, bf16=bf16),
                               val.y, data.classes).loss
    assert r.history[-1]["val_loss"] == pytest.approx(loss(precision == "bf16"), abs=1e-6)
    assert r.history[-1]["val_loss"] != pytest.approx(loss(precision != "bf16"), abs=1e-6)


def test_mlflow_run_holds_params_metrics_and_model(tiny_params, cifar_npz, tmp_path,
                                                   mlflow_store):
    from mlflow.tracking import MlflowClient
    rec = stage(tiny_params(), cifar_npz, tmp_path)
    client = MlflowClient()
    run = client.get_run(rec["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.dim"] == "32" and run.data.params["train.epochs"] == "3"
    assert run.data.tags["torch_version"] == torch.__version__
    assert run.data.tags["device"] == "cpu" and "git_commit" in run.data.tags
    assert run.data.params["train.precision"] == run.data.tags["precision"] == "fp32"
    history = client.get_metric_history(run.info.run_id, "val/accuracy")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == \
        [r["val_acc"] for r in rec["history"]]
    assert "history" in {a.path for a in client.list_artifacts(run.info.run_id)}
    logged = {"experiment_ids": [run.info.experiment_id],
              "filter_string": f"source_run_id = '{run.info.run_id}'"}
    assert client.search_logged_models(**logged) == []  # the publish stage logs the model
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params().to_dict()))
    run_publish(params_file, tmp_path / "models" / "model.pt", cifar_npz, tmp_path / "published.json")
    models = client.search_logged_models(**logged)
    assert len(models) == 1
    assert models[0].artifact_location.startswith((mlflow_store / "mlartifacts").as_uri())


def test_first_steps_print_an_estimate_of_the_whole_run(tiny_params, cifar_npz, tmp_path,
                                                         monkeypatch, capsys):
    """The first step stands for compiling (train.compile), which takes a CPU half a minute
    at the preset's size: neither estimate may count it as the pace of the run."""
    monkeypatch.setattr(loop, "ETA_STEP", 2)
    real, calls = loop.optimizer_step, []

    def slow_first(*args, **kwargs):
        if not calls:
            time.sleep(4.0)
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(loop, "optimizer_step", slow_first)
    fit(tiny_params(**{"train.epochs": 3}), cifar_npz, tmp_path)
    out = capsys.readouterr()
    text = out.out + out.err
    assert text.count("estimate:") == 1  # once, in the first epoch
    line = next(x for x in text.splitlines() if "estimate:" in x)
    assert "of training for the 30 steps left" in line  # 3 epochs x 11 steps, 3 done
    assert re.search(r"\(\d+ ms/step after a first step of 4\.\d s\)", line), line
    assert int(re.search(r"(\d+) ms/step", line)[1]) < 1000, line
    etas = re.findall(r"epoch +\d/3 .* eta (\d+) s", text)
    assert len(etas) == 3 and int(etas[1]) <= 1, text  # with epoch 1's 4 s it would be 2 or more


def test_resumed_run_logs_each_epoch_once_and_takes_the_new_experiments_tags(mlflow_store,
                                                                             monkeypatch):
    from mlflow.tracking import MlflowClient

    from vitlens.tracking import runs

    monkeypatch.setenv("DVC_EXP_NAME", "first-exp")
    run = runs.create_run("tests", "first-exp", runs.dvc_tags())
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 2.0 / e} for e in (1, 2, 3)]
    run.log_metrics(runs.epoch_metrics(rows[0]), step=1)  # epoch 2 was killed before logging
    monkeypatch.setenv("DVC_EXP_NAME", "second-exp")
    run.reopen()
    run.log_missing_epochs(rows[:2])
    client = MlflowClient()
    assert sorted(m.step for m in client.get_metric_history(run.id, "val/loss")) == [1, 2]
    assert client.get_run(run.id).data.tags["dvc_exp_name"] == "second-exp"
    monkeypatch.delenv("DVC_EXP_NAME")
    run.reopen()  # resumed by a plain `dvc repro`: no experiment any more
    assert "dvc_exp_name" not in client.get_run(run.id).data.tags
    run.finish("FINISHED")


def test_checkpoint_digest_covers_only_what_changes_the_weights(tiny_params, tmp_path):
    """A local copy of the same archive (same MD5), threads or compile settings keep the
    checkpoint; anything that changes the trained weights throws it away."""
    base = checkpoint.checkpoint_digest(tiny_params())
    same = [{"data.url": str(tmp_path / "copy.tar.gz")}, {"data.retries": 0}, {"data.timeout_s": 1.0},
            {"train.threads": 1}, {"train.compile": True},
            {"train.compile": True, "train.compile_mode": "reduce-overhead"}]
    for change in same:
        assert checkpoint.checkpoint_digest(tiny_params(**change)) == base, change
    other = [{"data.md5": "0" * 32}, {"data.val_seed": 1}, {"data.train_subset": 100},
             {"model.dim": 48}, {"train.lr": 0.001}, {"train.epochs": 4}, {"train.seed": 1},
             {"train.batch_size": 16}, {"train.flip": False}, {"train.nproc": 2},
             {"train.ema": 0.9}, {"train.label_smoothing_decay": True}, {"model.pos_embed": "sincos"},
             {"train.token_drop_decay": True},
             {"model.stem": "conv"},
             {"train.precision": "bf16"}]
    for change in other:
        assert checkpoint.checkpoint_digest(tiny_params(**change)) != base, change


def test_a_checkpoint_resumes_under_a_local_copy_and_other_threads(tiny_params, cifar_npz, tmp_path,
                                                                  monkeypatch, capsys):
    p = tiny_params(**{"tracking.enabled": False})
    crash_after(monkeypatch, 1)
    with pytest.raises(Crash):
        stage(p, cifar_npz, tmp_path)
    monkeypatch.undo()
    moved = tiny_params(**{"tracking.enabled": False, "data.url": str(tmp_path / "copy.tar.gz"),
                           "train.threads": 1})
    stage(moved, cifar_npz, tmp_path)
    assert "resuming from" in capsys.readouterr().out


def test_snapshots_keep_every_epoch_and_survive_a_resume(tiny_params, cifar_npz, tmp_path,
                                                         monkeypatch):
    from vitlens.explain.maps import compute_maps

    p = tiny_params(**{"tracking.enabled": False, "train.snapshot_images": 3})
    straight = stage(p, cifar_npz, tmp_path / "straight")["snapshots"]
    assert straight["epochs"] == [1, 2, 3] and straight["images"].shape == (3, 3, 32, 32)
    assert straight["rollout"].shape == (3, 3, 8, 8) and straight["heads"].shape == (3, 3, 2, 8, 8)
    assert not torch.equal(straight["rollout"][0], straight["rollout"][-1])  # the maps move
    trained = load_trained(tmp_path / "straight" / "models" / "model.pt", "cpu")
    last = compute_maps(trained.vit, trained.norm(straight["images"]), grad=False)
    torch.testing.assert_close(straight["rollout"][-1].float(), last.rollout, atol=1e-3, rtol=1e-2)

    crash_after(monkeypatch, 2)
    with pytest.raises(Crash):
        stage(p, cifar_npz, tmp_path / "resumed")
    monkeypatch.undo()
    resumed = stage(p, cifar_npz, tmp_path / "resumed")["snapshots"]
    assert resumed["epochs"] == [1, 2, 3]
    torch.testing.assert_close(resumed["rollout"], straight["rollout"])


def test_publish_logs_the_snapshots_as_a_stepped_image(tiny_params, cifar_npz, tmp_path, mlflow_store):
    """Training logs no image (it draws nothing); the publish stage draws one per epoch."""
    from mlflow.tracking import MlflowClient

    p = tiny_params(**{"train.epochs": 2, "tracking.log_model": False})
    rec = stage(p, cifar_npz, tmp_path)
    assert not MlflowClient().list_artifacts(rec["mlflow_run_id"], "images")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(p.to_dict()))
    published = run_publish(params_file, tmp_path / "models" / "model.pt", cifar_npz, tmp_path / "published.json")
    assert published == {"run_id": rec["mlflow_run_id"], "model_uri": None}
    # the model file too, without the served model: what `vitlens compare RUN_ID` reads
    assert [a.path for a in MlflowClient().list_artifacts(rec["mlflow_run_id"], "models")] == ["models/model.pt"]
    paths = [a.path for a in MlflowClient().list_artifacts(rec["mlflow_run_id"], "images")]
    # MLflow names them images/<key, / as ~>+step+<step>+timestamp+...png (plus a thumbnail)
    steps = sorted(int(p.split("+step+")[1].split("+")[0]) for p in paths
                   if p.startswith("images/attention~rollout+step+") and p.endswith(".png"))
    assert steps == [1, 2], paths


def test_the_gpu_sized_default_on_a_cpu_says_so_before_training(params_dict, capsys):
    from vitlens.config import parse_params
    from vitlens.pipeline.train import warn_if_gpu_sized
    from vitlens.train import preset
    from vitlens.train.loop import training_flops

    default = parse_params(params_dict)
    warn_if_gpu_sized(default, torch.device("cpu"), 50_000)
    line = capsys.readouterr().out
    assert line.startswith("note: training on a CPU a model sized for a GPU") and "make repro-cpu" in line
    assert "vitlens cpu-preset" in line
    # A short run on a subset still names its size (".1f" printed "0.0 PFLOP" there).
    small = dataclasses.replace(default, data=dataclasses.replace(default.data, train_subset=2560),
                                train=dataclasses.replace(default.train, epochs=2))
    warn_if_gpu_sized(small, torch.device("cpu"), 50_000)
    pflop = float(capsys.readouterr().out.split(" PFLOP")[0].rsplit("(", 1)[1])
    assert pflop == pytest.approx(training_flops(small, 50_000) / 1e15, rel=0.05) and pflop > 0
    warn_if_gpu_sized(default, torch.device("cuda"), 50_000)
    for key, value in preset.MODEL.items():
        section, name = key.split(".")
        params_dict[section][name] = value
    warn_if_gpu_sized(parse_params(params_dict), torch.device("cpu"), 50_000)
    assert capsys.readouterr().out == ""


def test_the_warnings_constant_is_the_cpu_presets_flops_per_image(params_dict):
    """pipeline/train keeps the preset's size as a number (the preset is no dependency of
    training); it must stay the preset model's FLOPs per image."""
    from vitlens.config import parse_params
    from vitlens.model.vit import train_flops_per_image
    from vitlens.pipeline.train import CPU_PRESET_FLOPS_PER_IMAGE
    from vitlens.train import preset

    cpu = preset.apply(parse_params(params_dict), preset.MODEL)
    assert CPU_PRESET_FLOPS_PER_IMAGE == pytest.approx(train_flops_per_image(cpu.model), rel=0.01)


def test_the_run_records_its_dataset_with_a_digest_of_all_of_it(tiny_params, cifar_npz, tmp_path,
                                                                mlflow_store):
    """mlflow.log_input: the name, the source, images per split and class, the image size and
    a digest of every image; two runs on the same data show the same digest, other data another."""
    import json

    from mlflow.tracking import MlflowClient

    data = load_arrays(cifar_npz)
    digests = []
    for i in range(2):
        rec = stage(tiny_params(**{"train.epochs": 1}), cifar_npz, tmp_path / str(i))
        [inp] = MlflowClient().get_run(rec["mlflow_run_id"]).inputs.dataset_inputs
        ds = inp.dataset
        assert ds.name == "cifar10" and json.loads(ds.source)["uri"] == data.source
        profile = json.loads(ds.profile)
        assert (profile["train"], profile["test"], profile["image_size"]) == (400, 100, 32)
        assert profile["per_class"]["airplane"] == {"train": int((data.y_train == 0).sum()),
                                                    "test": int((data.y_test == 0).sum())}
        assert [t.value for t in inp.tags if t.key == "mlflow.data.context"] == ["train"]
        digests.append(ds.digest)
    assert digests[0] == digests[1] == data.digest()[:32]
    last = data.x_test.copy()
    last[-1, 0, -1, -1] ^= 1  # one bit of the last image: MLflow's own digest reads the first rows
    assert dataclasses.replace(data, x_test=last).digest() != data.digest()
