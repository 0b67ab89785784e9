"""The bench runs end to end in --quick mode. No speed is asserted (the numbers depend on the
machine and its load), but every number must come from real work: images/s from the measured
seconds, ratios from the images/s, a FLOP rate no CPU reaches would mean an empty timed step,
and the pipeline's "ours" batches are real crops and flips of their images. Known timings
fed through the timing helpers and the epoch estimate give known numbers, and the report
names the precision the steps ran in."""
import contextlib
import dataclasses
import io
import json
import statistics
import types
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import bench, bench_data, bench_loop
from benchmarks.bench_precision import in_precision
from benchmarks.bench_report import environment
from vitlens import device
from vitlens.config import ModelConfig, load_params
from vitlens.data.normalize import channel_stats
from vitlens.model.vit import build_model, train_flops_per_image
from vitlens.train import harness, preset
from vitlens.train.optim import make_optimizer
from vitlens.train.step import optimizer_step

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
MAX_CPU_FLOPS = 10e12  # FLOP/s: far above any CPU's fp32 peak; a faster "step" did no work
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, dict]:
    """The quick bench, with every batch our pipeline makes watched: (result, printed, seen).
    In train.precision bf16, which `auto` does not choose on a CPU without native bf16: the
    report must say bf16 all the same, because that is what ran."""
    folder = tmp_path_factory.mktemp("bench")
    out, params = folder / "bench.json", folder / "params.yaml"
    raw = yaml.safe_load(PARAMS.read_text())
    raw["train"]["precision"] = "bf16"
    params.write_text(yaml.safe_dump(raw))
    printed = io.StringIO()
    seen: dict = {"calls": 0, "images": [], "first": None}
    real = bench_data.batch_maker

    def watched(split, norm, t, augment, **kw):
        batch = real(split, norm, t, augment, **kw)

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
            bench.main(["--quick", "--device", "cpu", "--params", str(params), "--out", str(out)])
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


def test_the_bench_times_each_augmentation_lever_against_the_step(quick_run):
    result, printed, _ = quick_run
    levers = result["levers"]
    # On a CPU the levers weigh against the CPU preset's step (--quick: the tiny model's).
    fast = "bf16" if result["precision"]["native_bf16_flags"] else "fp32"
    assert levers["step_s"] == result["precision"][fast]["median_s"]
    batch = result["precision"]["batch_size"]
    for name in ("plain", "trivial_augment", "mixup", "cutmix"):
        assert_timed(levers[name], batch, 8, 2)
    for name in ("trivial_augment", "mixup", "cutmix"):
        extra = (levers[name]["median_s"] - levers["plain"]["median_s"]) / levers["step_s"]
        assert levers[name]["extra_share_of_step"] == pytest.approx(extra), name
    assert "a batch with each lever on" in printed


def test_records_environment_and_config(quick_run):
    result, printed, _ = quick_run
    env = result["environment"]
    assert (env["device"], env["threads"], env["torch"]) == ("cpu", 2, torch.__version__)
    assert env["timm"] == bench.import_timm().__version__ and env["device_name"] == env["cpu"]
    assert result["config"] == {"batch_size": 16, "steps": 2, "warmup": 1, "rounds": 2,
                                "pipeline_epochs": 2, "model": dataclasses.asdict(bench.QUICK_MODEL)}


def test_the_report_names_the_precision_that_ran(quick_run):
    """train.precision bf16 ran bf16 autocast: the logits of every timed step say so, and so
    must the environment, the loop's line and the printed header."""
    result, printed, _ = quick_run
    assert result["environment"]["precision"] == "bf16 autocast"
    for name in ("ours", "timm"):
        assert result["models"][name]["precision"] == "bf16", name
        assert result["models"][name]["logits_dtype"] == "bfloat16", name
    assert result["loop"]["precision"] == "bf16"
    assert "(cpu, 2 threads, bf16 autocast)" in printed and "steps/epoch, bf16)" in printed
    assert environment(CPU, "1.0", "fp32")["precision"] == "fp32"


def test_both_models_train_with_matching_sizes(quick_run):
    models = quick_run[0]["models"]
    for name, model in (("ours", build_model(bench.QUICK_MODEL, 10)),
                        ("timm", bench.timm_vit(bench.QUICK_MODEL))):
        assert models[name]["params"] == sum(p.numel() for p in model.parameters()), name
    assert models["ours"]["params"] == pytest.approx(models["timm"]["params"], rel=0.01)


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
    a rate no CPU core reaches, in fp32 (the peak the bound is above) as the params ask."""
    params = in_precision(load_params(PARAMS), "fp32")
    cfg = ModelConfig(image_size=32, patch_size=4, dim=64, depth=2, heads=2, mlp_ratio=2.0,
                      dropout=0.0, attn_dropout=0.0, drop_path=0.0, pos_embed="learned", stem="patch",
                      token_drop=0.0, pool="cls", lsa=False, registers=0)
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
        assert (models[name]["precision"], models[name]["logits_dtype"]) == ("fp32", "float32")


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
    levers = 4 * (1 + 4 * cfg["rounds"])  # bench_levers: 4 makers, one untimed batch, 4 per round
    assert seen["calls"] == runs * (1 + cfg["pipeline_epochs"]) * batches + levers
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
    ours, labels = batch_maker(split, norm, t, torch.Generator().manual_seed(0), classes=10)(torch.arange(8))
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


def test_known_timings_give_known_summaries():
    r = harness.summarize_calls([[0.2, 0.4, 0.1], [0.9]], images=8)
    assert r["seconds"] == [0.2, 0.4, 0.1, 0.9]
    assert r["median_s"] == pytest.approx(0.3)  # of 0.1, 0.2, 0.4, 0.9 (their mean: 0.4)
    assert r["images_per_second"] == pytest.approx(8 / 0.3)
    assert r["round_medians_s"] == [pytest.approx(0.2), pytest.approx(0.9)]
    # b's round medians over a's: 3, 1, 1.5 -> a is 1.5x b's speed, round by round
    a, b = {"round_medians_s": [1.0, 2.0, 4.0]}, {"round_medians_s": [3.0, 2.0, 6.0]}
    assert harness.paired_speedup(a, b) == pytest.approx(1.5)


def test_contenders_alternate_and_every_call_is_timed_alone(monkeypatch):
    """On a fake clock that only the calls advance: 5 calls of each in 3 rounds (2, 2, 1),
    the order flipping each round, each call's seconds its own."""
    now = [100.0]
    monkeypatch.setattr(harness, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    calls = []

    def takes(name, seconds):
        def run():
            calls.append(name)
            now[0] += seconds
        return run
    times = harness.alternate({"a": takes("a", 1.0), "b": takes("b", 2.0)}, n=5, rounds=3,
                              device=CPU)
    assert "".join(calls) == "aabbbbaaab"
    assert times == {"a": [[1.0, 1.0], [1.0, 1.0], [1.0]], "b": [[2.0, 2.0], [2.0, 2.0], [2.0]]}
    assert harness.time_calls(takes("c", 0.25), 3, CPU) == [0.25] * 3


def test_the_epoch_estimate_adds_up_known_step_times(monkeypatch):
    """Set step and validation times (no compiling on a CPU) give the estimate exactly:
    (50,000 - 5,000) // 16 = 2,812 steps and 10 validation batches of 500 an epoch."""
    params = load_params(PARAMS)
    s = bench.Settings(batch_size=16, steps=4, warmup=1, rounds=2, images=32, pipeline_epochs=1,
                       model=bench.QUICK_MODEL)
    real = harness.harness
    monkeypatch.setattr(bench, "harness", lambda p, batch, dev, compile_mode: real(p, batch, dev))
    monkeypatch.setattr(bench, "time_calls", lambda fn, n, dev: [0.1] * n)
    monkeypatch.setattr(bench, "alternate", lambda fns, **kw: {
        "eager": [[0.5, 0.5], [0.5, 0.7]], "compiled": [[0.25, 0.25], [0.25, 0.1]]})
    ep = bench.estimate_epochs(params, s, CPU)
    assert (ep["steps_per_epoch"], ep["val_batch_seconds"], ep["epochs"]) == (2812, 0.1, 20)
    for name, median in (("eager", 0.5), ("compiled", 0.25)):
        assert ep[name]["median_s"] == median and ep[name]["first_step_s"] == 0.1
        assert ep[name]["epoch_s"] == pytest.approx(2812 * median + 10 * 0.1)
        assert ep[name]["total_s"] == pytest.approx(0.1 + 20 * (2812 * median + 1.0))


def test_the_harness_steps_as_training_does(tiny_params):
    """Fresh augmented batches, the weight average updated after each step, and the
    precision the params ask: bf16 autocast, or fp32."""
    p = tiny_params(**{"train.ema": 0.9, "train.precision": "bf16"})
    split, norm = harness.synthetic_split(p.train.batch_size, CPU)
    h = harness.harness(p, harness.augmented(split, norm, p.train), CPU)
    assert not torch.equal(h.batch()[0], h.batch()[0])  # augmented afresh
    average = [a.clone() for a in h.ema.model.parameters()]
    loss, logits, y = h.step()
    assert (h.precision, logits.dtype, h.ema.updates) == ("bf16", torch.bfloat16, 1)
    assert not all(torch.equal(a, b) for a, b in zip(average, h.ema.model.parameters()))
    harness.validation_pass(h.model, norm(split.x), CPU, bf16=h.bf16)()
    assert h.model.training  # left as it was: the next step trains with dropout, drop path
    fp32 = harness.harness(in_precision(p, "fp32"), harness.ready(norm(split.x), split.y), CPU)
    assert (fp32.precision, fp32.step()[1].dtype) == ("fp32", torch.float32)


def test_the_loop_is_timed_on_the_steps_device_and_model():
    """The loop's epoch 2 runs as the bare step does: on the bench's device (not train.device),
    with the model's token drop (not decayed to 0 in a 2-epoch run), the same precision,
    weight average and model."""
    p = preset.apply(load_params(PARAMS), {"train.device": "auto", "train.token_drop_decay": True,
                                           "model.token_drop": 0.25, "train.ema": 0.9})
    lp = bench_loop.loop_params(p, batch_size=8, steps=3, device=CPU)
    assert (lp.train.device, lp.train.token_drop_decay, lp.train.epochs) == ("cpu", False, 2)
    assert (lp.train.precision, lp.train.ema, lp.model) == (p.train.precision, 0.9, p.model)
