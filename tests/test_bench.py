"""The bench runs end to end in --quick mode; no timing is asserted (benchmarks are not
timed tests: the numbers depend on the machine and its load)."""
import contextlib
import io
import json
from pathlib import Path

import pytest

from vitlens import bench
from vitlens.data import channel_stats

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench.main(["--quick", "--device", "cpu", "--params", str(PARAMS), "--out", str(out)])
    return json.loads(out.read_text()), printed.getvalue()


def test_records_environment_and_config(quick_run):
    result, _ = quick_run
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


def test_all_pipelines_measured(quick_run):
    pipe = quick_run[0]["pipeline"]
    loaders = [f"dataloader_{kind}_{w}_workers" for kind in ("tensor", "pil") for w in (0, 2)]
    for name in ("ours", *loaders):
        assert pipe[name]["images_per_second"] > 0
    assert pipe["best_dataloader"] in loaders
    assert pipe["ratio_ours_over_best_dataloader"] > 0
    assert pipe["paired_ratio_ours_over_best_dataloader"] > 0


def test_epoch_estimate_skipped_on_cpu(quick_run):
    assert "skipped" in quick_run[0]["epochs"]


def test_table_printed(quick_run):
    _, text = quick_run
    for needle in ("| train step", "vitlens ViT", "timm VisionTransformer", "ours / timm",
                   "| data pipeline", "DataLoader", "ours / best DataLoader", "skipped"):
        assert needle in text


@pytest.mark.parametrize("pil", [False, True])
def test_pipelines_produce_the_same_batches(pil):
    """Both sides yield normalised float (B, 3, 32, 32) batches, so they do the same work."""
    import torch

    from vitlens.config import load_params
    from vitlens.data import Normalizer, Split
    from vitlens.training import batch_maker

    t = load_params(PARAMS).train
    x, y = bench.synthetic_images(8)
    norm = Normalizer(*channel_stats(x))
    ds = bench.TransformedImages(x, y, bench.per_image_transform(t.crop_padding, t.flip, norm,
                                                                 pil), pil)
    theirs = torch.stack([ds[i][0] for i in range(8)])
    split = Split(torch.from_numpy(x), torch.from_numpy(y))
    ours, labels = batch_maker(split, norm, t, torch.Generator().manual_seed(0))(torch.arange(8))
    assert theirs.shape == ours.shape == (8, 3, 32, 32)
    assert theirs.dtype == ours.dtype == torch.float32
    assert torch.equal(labels, torch.from_numpy(y))
    plain = bench.TransformedImages(x, y, bench.per_image_transform(0, False, norm, pil), pil)
    # Without augmentation both are the same normalisation of the same pixels.
    assert torch.allclose(torch.stack([plain[i][0] for i in range(8)]),
                          norm(torch.from_numpy(x)), atol=1e-5)
