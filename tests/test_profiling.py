"""The step profile: per-step numbers from profiler rows, the one-line verdict, and a real
profile of the training step on the CPU whose per-step op counts match the model."""
import pytest
import torch

from benchmarks.profiling import profile_modes, profile_training, summarize_profile, verdict
from vitlens.data.imageset import load_arrays
from vitlens.train.loop import device_splits

GPU_ROWS = [("aten::mm", 40, 900.0, False),  # CPU ops: not ranked when kernels exist
            ("sm90_gemm", 40, 4000.0, True), ("layer_norm_kernel", 60, 1000.0, True),
            ("elementwise", 200, 1000.0, True)]


def test_gpu_rows_rank_kernels_and_sum_the_busy_time():
    s = summarize_profile(GPU_ROWS, steps=4, step_s=0.004)
    assert s["ranked_by"] == "GPU kernel time"
    assert [t["name"] for t in s["top"]] == ["sm90_gemm", "layer_norm_kernel", "elementwise"]
    assert s["top"][0] == {"name": "sm90_gemm", "calls_per_step": 10, "ms_per_step": 1.0,
                           "share_of_step": pytest.approx(0.25)}
    assert s["kernels_per_step"] == 75 and s["gpu_busy_ms_per_step"] == pytest.approx(1.5)
    assert s["gpu_busy_share"] == pytest.approx(0.375)


def test_cpu_rows_rank_ops_and_cut_names():
    rows = [("a" * 500, 3, 100.0, False), ("b", 6, 300.0, False), ("c", 3, 200.0, False)]
    s = summarize_profile(rows, steps=3, step_s=0.001, top=2)
    assert s["ranked_by"] == "CPU self time" and "gpu_busy_share" not in s
    assert [t["name"] for t in s["top"]] == ["b", "c"]
    assert s["top"][0]["calls_per_step"] == 2 and s["top"][0]["ms_per_step"] == pytest.approx(0.1)
    assert len(summarize_profile(rows, steps=3, step_s=0.001)["top"][2]["name"]) == 100


@pytest.mark.parametrize("extra,expected", [
    ({"syncs_per_step": 2.0}, "2.0 host syncs per step"),
    ({"input_share": 0.5}, "the input pipeline takes 50% of a step"),
    ({"gpu_busy_share": 0.4, "kernels_per_step": 700}, "launch-bound: the GPU is busy 40% of a "
     "step across 700 kernels"),
    ({"gpu_busy_share": 0.95, "kernels_per_step": 700}, "compute-bound: the top entry, gemm, "
     "takes 60%"),
    ({"top": []}, "compute-bound"),
])
def test_verdict_names_what_stands_in_the_way(extra, expected):
    p = {"syncs_per_step": 0.0, "input_share": 0.05,
         "top": [{"name": "gemm", "share_of_step": 0.6}], **extra}
    assert verdict(p).startswith(expected)


def test_a_real_cpu_profile_counts_each_op_once_per_step(tiny_params, cifar_npz):
    params = tiny_params(**{"model.depth": 3})
    data = load_arrays(cifar_npz)
    split, _, norm = device_splits(params, data, torch.device("cpu"))
    p = profile_training(params, split, norm, mode=None, steps=3, warmup=1, top=10_000)
    calls = {t["name"]: t["calls_per_step"] for t in p["top"]}
    assert calls["Optimizer.step#AdamW.step"] == 1
    assert calls["aten::native_layer_norm"] == 2 * 3 + 1  # two per block, the final norm
    assert calls["aten::_scaled_dot_product_flash_attention_for_cpu"] == 3
    ms = [t["ms_per_step"] for t in p["top"]]
    assert ms == sorted(ms, reverse=True) and ms[0] > 0
    assert p["images_per_second"] == pytest.approx(32 / (p["step_ms"] / 1e3))
    assert 0 < p["input_share"] < 1 and p["mode"] == "eager" and "syncs_per_step" not in p
    assert p["verdict"]


def test_profile_modes_runs_eager_alone_on_a_cpu(tiny_params, cifar_npz, capsys):
    r = profile_modes(tiny_params(), load_arrays(cifar_npz))
    assert [x["mode"] for x in r["runs"]] == ["eager"] and r["fastest"] == "eager"
    assert "profile eager:" in capsys.readouterr().out


def test_a_mode_that_fails_loses_only_itself(tiny_params, cifar_npz, monkeypatch, capsys):
    from benchmarks import profiling

    def broken(*args, mode, **kw):
        raise RuntimeError("inductor exploded\nsecond line")
    monkeypatch.setattr(profiling, "profile_training", broken)
    r = profile_modes(tiny_params(), load_arrays(cifar_npz))
    assert r == {"runs": [{"mode": "eager", "error": "RuntimeError: inductor exploded\nsecond line"}],
                 "fastest": None}
    assert "profile eager: failed: RuntimeError: inductor exploded\n" in capsys.readouterr().out
