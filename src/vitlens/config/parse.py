"""params.yaml -> validated Params: every key must be present and known; a wrong type or an
out-of-range value raises a ConfigError whose one line names the key, the value and what is
allowed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from vitlens.config.schema import ConfigError, Params


def _type_ok(value: Any, typ: Any) -> bool:
    if typ is bool:
        return isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is str:
        return isinstance(value, str)
    if typ in (list[int], list[str]):
        return isinstance(value, list) and all(_type_ok(v, typ.__args__[0]) for v in value)
    raise TypeError(f"unsupported config type {typ}")


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list[int]: "a list of integers", list[str]: "a list of strings"}


def _check_rules(key: str, value: Any, rules: Mapping[str, Any]) -> None:
    bounds = {"gt": (">", float.__gt__), "ge": (">=", float.__ge__),
              "lt": ("<", float.__lt__), "le": ("<=", float.__le__)}
    for rule, bound in rules.items():
        if rule == "choices":  # for a list: every entry
            if any(v not in bound for v in (value if isinstance(value, list) else [value])):
                what = "entries must each" if isinstance(value, list) else "must"
                raise ConfigError(f"{key}={value!r} {what} be one of {', '.join(map(str, bound))}")
            continue
        sym, op = bounds[rule]
        if not op(float(value), float(bound)):
            raise ConfigError(f"{key}={value!r} must be {sym} {bound}")


def _build(cls: type, section: str, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{section} must be a mapping of keys to values, got {raw!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{section}.{key} is not a known key (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = f"{section}.{name}"
        if name not in raw:
            raise ConfigError(f"{key} is missing")
        value, typ = raw[name], hints[name]
        if typ is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a str
            with contextlib.suppress(ValueError):
                value = float(value)
        if not _type_ok(value, typ):
            raise ConfigError(f"{key}={value!r} must be {_TYPE_NAMES[typ]}")
        _check_rules(key, value, f.metadata)
        values[name] = float(value) if typ is float else value
    return cls(**values)


def _cross_checks(p: Params) -> None:
    m, t = p.model, p.train
    if m.image_size % m.patch_size:
        raise ConfigError(f"model.image_size={m.image_size} must be divisible by model.patch_size={m.patch_size}")
    if m.dim % m.heads:
        raise ConfigError(f"model.dim={m.dim} must be divisible by model.heads={m.heads}")
    if m.pos_embed == "sincos" and m.dim % 4:
        raise ConfigError(f"model.dim={m.dim} must be divisible by 4 for model.pos_embed=sincos")
    if m.stem == "conv" and (m.patch_size < 2 or m.patch_size & (m.patch_size - 1)):
        raise ConfigError(f"model.patch_size={m.patch_size} must be a power of 2 for model.stem=conv")
    if t.cutout > m.image_size:
        raise ConfigError(f"train.cutout={t.cutout} must be <= model.image_size={m.image_size}")
    if t.warmup_epochs > t.epochs:
        raise ConfigError(f"train.warmup_epochs={t.warmup_epochs:g} must be <= train.epochs={t.epochs}")
    if t.batch_size % t.nproc:
        raise ConfigError(f"train.batch_size={t.batch_size} must be divisible by "
                          f"train.nproc={t.nproc} (each process takes an equal share of a batch)")
    if t.min_lr > t.lr:
        raise ConfigError(f"train.min_lr={t.min_lr:g} must be <= train.lr={t.lr:g}")
    _data_checks(p)
    f = p.faithfulness
    if not f.methods or len(set(f.methods)) < len(f.methods):
        raise ConfigError(f"faithfulness.methods={f.methods!r} must name each method once, at least one")
    r = p.report
    for key, chosen, top in (("layers", r.layers, m.depth), ("heads", r.heads, m.heads)):
        if any(not 1 <= i <= top for i in chosen) or len(set(chosen)) < len(chosen):
            raise ConfigError(f"report.{key}={chosen!r} must name each of 1-{top} at most once ([] = all)")
    if f.blur_kernel % 2 == 0:
        raise ConfigError(f"faithfulness.blur_kernel={f.blur_kernel} must be odd")


def _data_checks(p: Params) -> None:
    d = p.data
    if d.md5 and not re.fullmatch(r"[0-9a-fA-F]{32}", d.md5):
        raise ConfigError(f"data.md5={d.md5!r} must be 32 hex digits (or \"\": the official archive's)")
    if d.source == "folder" and not d.path:
        raise ConfigError("data.source=folder needs data.path: a folder of <class>/<picture> "
                          "(or train/<class>/... and test/<class>/...)")
    if d.source != "folder" and p.model.image_size != 32:
        raise ConfigError(f"data.source={d.source} holds 32-pixel pictures: model.image_size must be "
                          f"32, got {p.model.image_size} (other sizes: data.source=folder)")


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw[section][name] = value for `key` "section.name"; parse_params then validates it."""
    section, dot, name = key.partition(".")
    if not (dot and name) or not isinstance(raw.get(section), dict):
        raise ConfigError(f"{key!r} must be section.key with a known section "
                          f"({', '.join(f.name for f in dataclasses.fields(Params))})")
    raw[section][name] = value


def exp_run_flags(keys: Mapping[str, Any]) -> str:  # {"model.dim": 128} -> "-S model.dim=128"
    return " ".join(f"-S {k}={v}" for k, v in keys.items())


def parse_params(raw: Any) -> Params:
    """Build validated Params from a parsed params.yaml mapping."""
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml must hold a mapping of sections")
    sections = {f.name: f.type for f in dataclasses.fields(Params)}
    hints = get_type_hints(Params)
    for s in [*raw, *sections]:
        if s not in sections:
            raise ConfigError(f"{s} is not a known section (known: {', '.join(sections)})")
        if s not in raw:
            raise ConfigError(f"section {s} is missing")
    params = Params(**{s: _build(hints[s], s, raw[s]) for s in sections})
    _cross_checks(params)
    return params


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run from the project root") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_params(raw)

