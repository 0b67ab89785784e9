"""params.yaml validation: every mistake is one ConfigError line that names the key."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_type_hints

import pytest
import yaml

from conftest import PROJECT_ROOT, write_params
from vitlens.config import ConfigError, Params, load_params, parse_params

_MISSING = object()


def edited(raw: dict, key: str, value: Any = _MISSING) -> dict:
    """`raw` with `section.key` (or a whole `section`) set to `value`, or deleted if omitted."""
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    if value is _MISSING:
        del node[last]
    else:
        node[last] = value
    return raw


def test_real_params_load_as_the_file_says(params_dict: dict) -> None:
    """Every key of params.yaml, no more, each with the file's value in its field's declared
    type: a whole number written in a float field (`timeout_s: 20`) is read as 20.0, and
    nothing else changes. The reprs tell apart what == does not (20 and 20.0, 1 and True)."""
    p = load_params(PROJECT_ROOT / "params.yaml")
    floats = {f"{section}.{name}" for section, cls in get_type_hints(Params).items()
              for name, typ in get_type_hints(cls).items() if typ is float}
    want = {f"{s}.{k}": float(v) if f"{s}.{k}" in floats else v
            for s, section in params_dict.items() for k, v in section.items()}
    assert {k: repr(v) for k, v in p.flat().items()} == {k: repr(v) for k, v in want.items()}
    assert (p.model.image_size, p.model.patch_size) == (32, 4)


def test_int_is_accepted_and_stored_as_float(params_dict: dict) -> None:
    p = parse_params(edited(params_dict, "train.lr", 1))
    assert p.train.lr == 1.0 and type(p.train.lr) is float


def test_exponent_without_a_dot_is_read_as_the_number(tmp_path: Path, params_dict: dict) -> None:
    """YAML 1.1 reads `1e-5` as a string; the param means the number."""
    text = yaml.safe_dump(edited(params_dict, "train.min_lr", "PLACEHOLDER"))
    (tmp_path / "params.yaml").write_text(text.replace("PLACEHOLDER", "1e-5"))
    assert load_params(tmp_path / "params.yaml").train.min_lr == 1e-5


@pytest.mark.parametrize("key,value,message", [
    ("train.epoch", 10, "train.epoch is not a known key (known: epochs, batch_size"),
    ("optimizer", {"lr": 1}, "optimizer is not a known section (known: data, model"),
    ("model.depth", _MISSING, "model.depth is missing"),
    ("evaluate", _MISSING, "section evaluate is missing"),
    ("model", [1, 2], "model must be a mapping of keys to values, got [1, 2]"),
    ("train.epochs", "ten", "train.epochs='ten' must be an integer"),
    ("train.epochs", True, "train.epochs=True must be an integer"),
    ("train.epochs", 2.5, "train.epochs=2.5 must be an integer"),
    ("train.flip", 1, "train.flip=1 must be a boolean"),
    ("train.lr", "fast", "train.lr='fast' must be a number"),
    ("data.url", None, "data.url=None must be a string"),
    ("visualize.indices", [1, "2"], "visualize.indices=[1, '2'] must be a list of integers"),
    ("train.lr", -1, "train.lr=-1 must be > 0"),
    ("train.lr", 0, "train.lr=0 must be > 0"),
    ("model.dropout", 1.5, "model.dropout=1.5 must be < 1"),
    ("model.depth", 0, "model.depth=0 must be >= 1"),
    ("data.retries", 11, "data.retries=11 must be <= 10"),
    ("train.device", "tpu", "train.device='tpu' must be one of auto, cpu, cuda, mps"),
    ("train.compile_mode", "cudagraphs", "train.compile_mode='cudagraphs' must be one of "
     "default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs"),
    ("model.image_size", 30, "model.image_size=30 must be divisible by model.patch_size=4"),
    ("train.warmup_epochs", 100, "train.warmup_epochs=100 must be <= train.epochs=20"),
    ("train.min_lr", 0.5, "train.min_lr=0.5 must be <= train.lr=0.001"),
    ("data.md5", "c58f30108f718f92721af3b95e74349", "data.md5='c58f30108f718f92721af3b95e74349' "
     "must be 32 hex digits"),
    ("data.md5", "z" * 32, "must be 32 hex digits"),
])
def test_invalid_value_names_the_key(params_dict: dict, key: str, value: Any,
                                     message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_params(edited(params_dict, key, value))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_dim_not_divisible_by_heads_exact_message(params_dict: dict) -> None:
    params_dict["model"].update(dim=190, heads=3)
    with pytest.raises(ConfigError) as e:
        parse_params(params_dict)
    assert str(e.value) == "model.dim=190 must be divisible by model.heads=3"


def test_upper_case_md5_is_valid_and_kept_as_written(params_dict: dict) -> None:
    p = parse_params(edited(params_dict, "data.md5", "C58F30108F718F92721AF3B95E74349A"))
    assert p.data.md5 == "C58F30108F718F92721AF3B95E74349A"  # the download compares it lower-cased


@pytest.mark.parametrize("text,message", [
    (None, "not found: run from the project root"),
    ("model: [unclosed\n", "is not valid YAML"),
    ("", "params.yaml must hold a mapping of sections"),
    ("- a\n- b\n", "params.yaml must hold a mapping of sections"),
])
def test_unreadable_params_file(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "params.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_flat_keys(params_dict: dict) -> None:
    flat = parse_params(params_dict).flat()
    assert flat == {f"{s}.{k}": v for s, section in params_dict.items() for k, v in section.items()}
    assert flat["train.flip"] is True


def test_digest_tracks_only_its_sections(params_dict: dict) -> None:
    base = parse_params(params_dict)
    assert base.digest("model") == parse_params(params_dict).digest("model")
    more_epochs = parse_params(edited(params_dict, "train.epochs", 21))
    assert more_epochs.digest("model") == base.digest("model")
    assert more_epochs.digest("model", "train") != base.digest("model", "train")
    wider = parse_params(edited(params_dict, "model.dim", params_dict["model"]["dim"] * 2))
    assert wider.digest("model") != base.digest("model")


@pytest.mark.parametrize("key,value", [("train.epoch", 5), ("model.dropout", 1.5)])
def test_download_stage_rejects_bad_params(tmp_path: Path, params_dict: dict,
                                           key: str, value: Any) -> None:
    params = write_params(tmp_path / "params.yaml", edited(params_dict, key, value))
    out = tmp_path / "data" / "cifar10.npz"
    r = subprocess.run([sys.executable, "-m", "vitlens.stages.download", "--params", str(params),
                        "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], r.stderr
    assert r.stdout == ""
    assert sorted(tmp_path.rglob("*")) == [params]


def test_batch_size_must_split_evenly_over_processes(params_dict: dict) -> None:
    params_dict["train"].update(batch_size=256, nproc=3)
    with pytest.raises(ConfigError, match=r"train.batch_size=256 must be divisible by train.nproc=3"):
        parse_params(params_dict)
    params_dict["train"]["nproc"] = 4
    assert parse_params(params_dict).train.nproc == 4


@pytest.mark.parametrize("edits,says", [
    ({"data.source": "folder", "data.path": ""}, "data.source=folder needs data.path"),
    ({"model.image_size": 64, "model.patch_size": 8}, "data.source=cifar10 holds 32-pixel pictures"),
    ({"data.md5": "abc"}, "data.md5='abc' must be 32 hex digits"),
    ({"data.source": "imagenet"}, "data.source='imagenet' must be one of cifar10, cifar100, folder"),
    ({"data.labels": "mixed"}, "data.labels='mixed' must be one of fine, coarse")])
def test_data_sources_are_checked_on_load(params_dict: dict, edits: dict, says: str) -> None:
    for key, value in edits.items():
        section, name = key.split(".")
        params_dict[section][name] = value
    with pytest.raises(ConfigError, match=re.escape(says)):
        parse_params(params_dict)


def test_a_folder_at_another_size_and_the_official_archives_by_default_load(params_dict: dict) -> None:
    params_dict["data"].update(source="folder", path="/data/flowers")
    params_dict["model"].update(image_size=64, patch_size=8)
    p = parse_params(params_dict)
    assert (p.data.source, p.data.path, p.model.image_size) == ("folder", "/data/flowers", 64)
    assert (p.data.url, p.data.md5) == ("", "")  # params.yaml's: the source's official archive
