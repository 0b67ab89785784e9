"""The bench runs end to end in --quick mode. No speed is asserted (the numbers depend on the
machine and its load), but every number must come from real work: images/s from the measured
seconds, ratios from the images/s, a FLOP rate no CPU reaches would mean an empty timed step,
and the pipeline's "ours" batches are real crops and flips of their images."""
import contextlib
import io
import json
import statistics
from pathlib import Path

import pytest
import torch

from vitlens import device
from vitlens.config import ModelConfig, load_params
from vitlens.data.normalize import channel_stats
from vitlens.model.vit import build_model, train_flops_per_image
from vitlens.perf import bench, bench_data
from vitlens.train.step import make_optimizer, optimizer_step

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
MAX_CPU_FLOPS = 10e12  # FLOP/s: far above any CPU's fp32 peak; a faster "step" did no work


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, dict]:
    """The quick bench, with every batch our pipeline makes watched: (result, printed, seen)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = io.StringIO()
    seen: dict = {"calls": 0, "images": [], "first": None}
    real = bench_data.batch_maker

    def watched(split, norm, t, augment):
        batch = real(split, norm, t, augment)

        def recorded(idx):
            out = batch(idx)
            seen["calls"] += 1
            seen["images"].append(len(idx))
            if seen["first"] is None:
                seen["first"] = (split.x[idx].clone(), norm, t, out)
            return out
        return recorded

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # conftest's one thread would leave out the 1-thread contender
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
            mp.setattr(bench_data, "batch_maker", watched)
            bench.main(["--quick", "--device", "cpu", "--params", str(PARAMS), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text()), printed.getvalue(), seen


def assert_timed(r: dict, per_call: int, calls: int, rounds: int) -> None:
    """summarize_calls's numbers are those of `calls` measured calls of `per_call` images."""
    seconds = r["seconds"]
    assert len(seconds) == calls and all(t > 0 for t in seconds)
    assert r["median_s"] == pytest.approx(statistics.median(seconds))
    assert r["images_per_second"] == pytest.approx(per_call / r["median_s"])
    assert len(r["round_medians_s"]) == min(rounds, calls)
    assert min(seconds) <= min(r["round_medians_s"]) <= max(r["round_medians_s"]) <= max(seconds)


def paired(a: dict, b: dict) -> float:
    return statistics.median(tb / ta for ta, tb in zip(a["round_medians_s"], b["round_medians_s"]))


def test_records_environment_and_config(quick_run):
    result, _, _ = quick_run
    assert {"environment", "config", "models", "pipeline", "epochs"} <= result.keys()
    env = result["environment"]
    assert env["device"] == "cpu" and env["device_name"] and env["threads"] >= 1
    assert env["torch"] and env["timm"]
    assert {"batch_size", "steps", "warmup", "model"} <= result["config"].keys()
    assert {"dim", "depth", "heads", "patch_size", "mlp_ratio"} <= result["config"]["model"].keys()


def test_both_models_train_with_matching_sizes(quick_run):
    models = quick_run[0]["models"]
    for name in ("ours", "timm"):
        assert models[name]["images_per_second"] > 0
        assert len(models[name]["seconds"]) == quick_run[0]["config"]["steps"]
    assert models["ours"]["params"] == pytest.approx(models["timm"]["params"], rel=0.01)
    assert models["ratio_ours_over_timm"] > 0 and models["paired_ratio_ours_over_timm"] > 0


def test_model_numbers_come_from_the_measured_steps(quick_run):
    result = quick_run[0]
    models, cfg = result["models"], result["config"]
    for name in ("ours", "timm"):
        assert_timed(models[name], cfg["batch_size"], cfg["steps"], cfg["rounds"])
        flops = train_flops_per_image(ModelConfig(**cfg["model"])) * cfg["batch_size"]
        assert flops / models[name]["median_s"] < MAX_CPU_FLOPS, name
    ours, timm = models["ours"], models["timm"]
    assert models["ratio_ours_over_timm"] == pytest.approx(
        ours["images_per_second"] / timm["images_per_second"])
    assert models["paired_ratio_ours_over_timm"] == pytest.approx(paired(ours, timm))


def test_a_train_step_does_the_work_of_one():
    """Timed steps of a model with enough FLOPs that a step doing no real work would run at
    a rate no CPU core reaches."""
    params = load_params(PARAMS)
    cfg = ModelConfig(image_size=32, patch_size=4, dim=64, depth=2, heads=2, mlp_ratio=2.0,
                      dropout=0.0, attn_dropout=0.0, drop_path=0.0, pos_embed="learned", stem="patch",
                      token_drop=0.0, pool="cls", lsa=False)
    s = bench.Settings(batch_size=32, steps=2, warmup=1, rounds=2, images=32, pipeline_epochs=1,
                       model=cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the FLOP rate of one core: the bound holds all the more
    try:
        models = bench.bench_models(params, s, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    flops = train_flops_per_image(cfg) * s.batch_size
    assert flops > 5e8  # the bound below means something only for a step this big
    for name in ("ours", "timm"):
        assert_timed(models[name], s.batch_size, s.steps, s.rounds)
        assert flops / models[name]["median_s"] < MAX_CPU_FLOPS / 10, name  # one thread


def test_all_pipelines_measured(quick_run):
    result = quick_run[0]
    pipe, cfg = result["pipeline"], result["config"]
    loaders = [f"dataloader_{kind}_{w}_workers" for kind in ("tensor", "pil") for w in (0, 2)]
    per_epoch = pipe["images"] // cfg["batch_size"] * cfg["batch_size"]
    for name in ("ours", *loaders):
        assert pipe[name]["images_per_second"] > 0
        assert_timed(pipe[name], per_epoch, cfg["pipeline_epochs"], cfg["pipeline_epochs"])
    best = max(loaders, key=lambda k: pipe[k]["images_per_second"])
    assert pipe["best_dataloader"] == best
    assert pipe["ratio_ours_over_best_dataloader"] == pytest.approx(
        pipe["ours"]["images_per_second"] / pipe[best]["images_per_second"])
    assert pipe["paired_ratio_ours_over_best_dataloader"] == pytest.approx(
        paired(pipe["ours"], pipe[best]))


def test_our_pipeline_makes_every_batch_of_every_epoch(quick_run):
    """The timed "ours" epochs make real training batches: every batch of every epoch (one
    untimed, then the timed ones; again on one thread when torch has more), each of the
    batch size, normalised crops and flips of their images, not the images themselves."""
    result, _, seen = quick_run
    pipe, cfg = result["pipeline"], result["config"]
    batches = pipe["images"] // cfg["batch_size"]
    assert "ours_1_thread" in pipe  # torch had 2 threads
    runs = 2  # "ours", then "ours_1_thread": the same epochs on one thread
    assert seen["calls"] == runs * (1 + cfg["pipeline_epochs"]) * batches
    assert set(seen["images"]) == {cfg["batch_size"]}
    x, norm, t, (images, labels) = seen["first"]
    assert images.shape == (cfg["batch_size"], 3, 32, 32) and images.dtype == torch.float32
    assert len(labels) == cfg["batch_size"]
    assert not torch.allclose(images, norm(x))  # augmented, not passed through
    for i in range(len(x)):
        allowed = norm(crop_flip_variants(x[i], t.crop_padding))
        assert (allowed - images[i]).abs().flatten(1).max(dim=1).values.min() < 1e-4, i


def test_epoch_estimate_skipped_on_cpu(quick_run):
    assert "skipped" in quick_run[0]["epochs"]


def test_table_printed(quick_run):
    _, text, _ = quick_run
    for needle in ("| train step", "vitlens ViT", "timm VisionTransformer", "ours / timm",
                   "| data pipeline", "DataLoader", "ours / best DataLoader", "skipped"):
        assert needle in text


def crop_flip_variants(image, padding: int):
    """Every crop of the zero-padded uint8 image, plain and mirrored: (2 * (2p + 1)**2, C, H, W)."""
    import torch

    padded = torch.nn.functional.pad(image, (padding,) * 4)
    size = image.shape[-1]
    crops = [padded[:, dy:dy + size, dx:dx + size] for dy in range(2 * padding + 1)
             for dx in range(2 * padding + 1)]
    return torch.stack(crops + [c.flip(-1) for c in crops])


@pytest.mark.parametrize("pil", [False, True])
def test_pipelines_produce_the_same_augmentations(pil):
    """Both sides turn each image into a normalised float crop/flip of its zero-padded self,
    so the bench compares the same work."""
    import torch

    from vitlens.config import load_params
    from vitlens.data.normalize import Normalizer
    from vitlens.data.split import Split
    from vitlens.train.step import batch_maker

    t = load_params(PARAMS).train
    assert t.crop_padding > 0 and t.flip  # the default recipe augments
    x, y = bench_data.synthetic_images(8)
    norm = Normalizer(*channel_stats(x))
    ds = bench_data.TransformedImages(x, y, bench_data.per_image_transform(t.crop_padding, t.flip, norm,
                                                                 pil), pil)
    theirs = torch.stack([ds[i][0] for i in range(8)])
    split = Split(torch.from_numpy(x), torch.from_numpy(y))
    ours, labels = batch_maker(split, norm, t, torch.Generator().manual_seed(0))(torch.arange(8))
    assert theirs.dtype == ours.dtype == torch.float32
    assert torch.equal(labels, torch.from_numpy(y))
    for i in range(8):
        allowed = norm(crop_flip_variants(torch.from_numpy(x[i]), t.crop_padding))
        for name, batch in (("DataLoader", theirs), ("ours", ours)):
            gap = (allowed - batch[i]).abs().flatten(1).max(dim=1).values.min()
            assert gap < 1e-4, f"{name} image {i} is no crop/flip of its padded original"


def test_every_attention_kernel_runs_and_agrees_with_sdpa(quick_run):
    result, printed, _ = quick_run
    a = result["attention"]["quick"]
    assert a["shape_b_heads_n_d"] == [4, 2, 17, 16]  # patch 8: 16 patches + CLS; dim 32 / 2
    for kernel in ("sdpa_default", "sdpa_math", "sdpa_flash", "explicit"):
        assert a[kernel]["median_ms"] > 0, kernel
        assert a[kernel]["max_abs_diff"] < 1e-5, kernel
    assert a["fastest"] in ("sdpa_default", "sdpa_math", "sdpa_flash", "explicit")
    assert a["speedup_fastest_over_default"] == pytest.approx(
        a["sdpa_default"]["median_ms"] / a[a["fastest"]]["median_ms"])
    assert a["speedup_fastest_over_default"] >= 1
    assert "attention, quick: B 4, heads 2, tokens 17, head dim 16" in printed
    assert a["dtype"] == "float32"


def test_attention_is_timed_in_bf16_too_with_bf16_tensors(quick_run):
    """bf16 is the format autocast hands attention: the model's explicit path there must be
    among the kernels timed in it (it is the CPU's bf16 path)."""
    result, printed, _ = quick_run
    a = result["attention"]["quick, bf16"]
    assert a["dtype"] == "bfloat16" and a["shape_b_heads_n_d"] == [4, 2, 17, 16]
    assert {"sdpa_default", "explicit"} <= a.keys()
    assert a["explicit"]["median_ms"] > 0
    assert a["explicit"]["max_abs_diff"] < 0.05  # bf16 keeps ~3 significant digits
    assert "attention, quick, bf16: B 4, heads 2" in printed


def test_the_training_loop_is_timed_against_its_bare_step(quick_run):
    result, printed, _ = quick_run
    lp = result["loop"]
    assert lp["steps_per_epoch"] == 4 and lp["batch_size"] == result["config"]["batch_size"]
    assert lp["loop_images_per_second"] > 0 and min(lp["step_before_after"]) > 0
    assert lp["step_images_per_second"] == pytest.approx(sum(lp["step_before_after"]) / 2)
    assert lp["ratio_loop_over_step"] == pytest.approx(
        lp["loop_images_per_second"] / lp["step_images_per_second"])
    assert f"loop / step: {lp['ratio_loop_over_step']:.2f}" in printed


def test_bf16_is_timed_beside_fp32_with_the_cpus_flags(quick_run):
    result, printed, _ = quick_run
    pr = result["precision"]
    assert pr["batch_size"] == result["config"]["batch_size"]
    assert pr["native_bf16_flags"] == device.native_bf16_cpu()
    for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        assert len(pr[name]["seconds"]) == result["config"]["steps"], name
        assert pr[name]["logits_dtype"] == dtype, name
    assert pr["speedup_bf16_over_fp32"] == pytest.approx(statistics.median(
        f / b for f, b in zip(pr["fp32"]["round_medians_s"], pr["bf16"]["round_medians_s"])))
    assert f"bf16 / fp32: {pr['speedup_bf16_over_fp32']:.2f}x" in printed


def test_the_step_runs_in_the_precision_asked(tiny_params):
    """bf16=True autocasts the forward on a CPU too; bf16=False keeps it in fp32."""
    p = tiny_params()
    torch.manual_seed(0)
    model = build_model(p.model, 10)
    opt = make_optimizer(model, p.train, torch.device("cpu"))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    cpu = torch.device("cpu")
    dtypes = [optimizer_step(model, model, opt, x, y, p.train, cpu, bf16=bf16)[1].dtype
              for bf16 in (False, True)]
    assert dtypes == [torch.float32, torch.bfloat16]


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert {"avx2", "avx512_bf16"} <= device.cpu_flags(info)
    assert device.cpu_flags(tmp_path / "absent") == set()


@pytest.mark.parametrize("precision,kind,flags,want", [
    ("auto", "cpu", {"avx2", "avx512_bf16", "amx_bf16"}, True),
    ("auto", "cpu", {"avx2", "avx512_bf16"}, True),  # AVX512-BF16 alone: 2.4x an epoch on a Zen 5
    ("auto", "cpu", {"avx2", "avx512f"}, False),  # AVX-512 without bf16: emulated
    ("auto", "cpu", set(), False), ("auto", "cuda", set(), True), ("auto", "mps", set(), False),
    ("fp32", "cpu", {"amx_bf16"}, False), ("fp32", "cuda", set(), False),
    ("bf16", "cpu", set(), True)])
def test_train_precision_resolves_to_bf16_on_cuda_and_native_bf16_cpus(monkeypatch, precision,
                                                                      kind, flags, want):
    monkeypatch.setattr(device, "cpu_flags", lambda: flags)
    assert device.use_bf16(precision, torch.device(kind)) is want


def test_the_precision_line_names_the_format_and_the_cpus_flags(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16"})
    assert device.precision_line(True, cpu) == \
        "precision: bf16 autocast on cpu (this CPU has avx512_bf16, amx_bf16)"
    assert device.precision_line(False, cpu) == "precision: fp32 on cpu"
    monkeypatch.setattr(device, "cpu_flags", lambda: set())
    assert "no native bf16" in device.precision_line(True, cpu)



@pytest.mark.parametrize("kind,flags,want", [
    ("cpu", [], ["preset", "default"]),  # emulated bf16: minutes at these shapes, not timed
    ("cpu", ["amx_bf16"], ["preset", "preset, bf16", "default", "default, bf16"]),
    ("cuda", [], ["preset", "preset, bf16", "default", "default, bf16"])])
def test_attention_is_timed_in_bf16_where_it_is_native(monkeypatch, kind, flags, want):
    monkeypatch.setattr(bench, "native_bf16_cpu", lambda: flags)
    shapes = bench.attention_shapes(load_params("params.yaml"), None, False, torch.device(kind))
    assert [name for name, *_ in shapes] == want
    assert {str(dtype) for name, _, _, dtype in shapes if name.endswith("bf16")} <= {"torch.bfloat16"}


def test_quick_times_bf16_attention_even_where_it_is_emulated(monkeypatch):
    monkeypatch.setattr(bench, "native_bf16_cpu", lambda: [])
    s = bench.Settings(batch_size=4, steps=1, warmup=1, rounds=1, images=8, pipeline_epochs=1,
                       model=bench.QUICK_MODEL)
    shapes = bench.attention_shapes(load_params("params.yaml"), s, True, torch.device("cpu"))
    assert [name for name, *_ in shapes] == ["quick", "quick, bf16"]
