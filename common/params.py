"""The strict params builder and its one error type.

Every params section is a dataclass next to the package that reads it; :func:`build` turns a
mapping into one, refusing unknown keys and building nested dataclass fields the same way, so a
typo anywhere is an error that names its key path (``curate.dedup.num_perm``) instead of a
silently ignored setting. Checks that need several fields live in the dataclass'
``__post_init__`` and raise :class:`ParamsError` through :func:`fail`.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import yaml

from common.errors import MixdistillError


class ParamsError(MixdistillError, ValueError):
    """A params.yaml value is missing or wrong; the message names the key path and says why."""


def fail(where: str, message: str) -> typing.NoReturn:
    raise ParamsError(f"{where}: {message}")


def load_yaml(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the project root or pass --params)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at top level")
    return data


def section(params: dict, name: str, required: bool = True) -> dict:
    value = params.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ParamsError(f"params: section '{name}' is missing or not a mapping")
    return value


def _nested(cls) -> dict[str, type]:
    """Fields of ``cls`` whose type is itself a dataclass (built recursively)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if dataclasses.is_dataclass(hints.get(f.name)) and isinstance(hints[f.name], type)}


def build(cls, data, where: str):
    """``cls(**data)`` with unknown keys refused and nested dataclass fields built from their
    mappings; any TypeError/ValueError of the constructor becomes a :class:`ParamsError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fail(where, f"expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        fail(where, f"unknown key(s) {unknown}; expected some of {sorted(known)}")
    data = dict(data)
    for name, sub in _nested(cls).items():
        if name in data and not isinstance(data[name], sub):
            data[name] = build(sub, data[name], f"{where}.{name}")
    try:
        return cls(**data)
    except ParamsError:
        raise
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"{where}: {exc}") from exc


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def deep_merge(base: dict, overlay: dict) -> dict:
    """``overlay`` over ``base``, mapping by mapping (a preset may change one nested key)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out
