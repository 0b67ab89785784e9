"""The bench runs end to end in --quick mode; no timing is asserted (benchmarks are not
timed tests: the numbers depend on the machine and its load)."""
import contextlib
import io
import json
from pathlib import Path

import pytest

from vitlens.data import channel_stats
from vitlens.perf import bench, bench_data

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
    from vitlens.data import Normalizer, Split
    from vitlens.step import batch_maker

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
