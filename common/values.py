"""A config's values: set from dotted keys with type and range checks, and written out (dict, YAML).

`apply` is the one way a value enters a config (YAML layers, the command line, a checkpoint's config):
an unknown key, a wrong type or a value outside the field's declared range is a ConfigError naming the
key and the fix. The only conversions are int -> float, scalars -> str, and numbers YAML left as text.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import MISSING
from typing import Any, Literal

import yaml

from common.errors import ConfigError
from common.fields import FLOAT32_MAX, Range, flatten, put, ranges, schema


def type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))
def _number(text: str) -> float | None:
    """A string YAML left as text but that is a number in common notation (PyYAML reads 1e-3 and 3e-4
    as strings: YAML 1.1 wants a dot and a signed exponent), else None."""
    try:
        return float(text.strip().replace("_", ""))
    except ValueError:
        return None


def _coerce(key: str, value: Any, tp) -> Any:
    """Check `value` against the field type; the only conversions are int -> float, scalars -> str,
    and a number written as text (1e-3, which YAML leaves a string) -> float, or -> int when whole (1e4)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key '{key}' expects {type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None) and value is None:
                return None
            try:
                return _coerce(key, value, arm)
            except ConfigError:
                pass
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, str) and _number(value) is not None and float(_number(value)).is_integer():
            return int(_number(value))
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str) and _number(value) is not None:
            return _number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        return str(value)
    raise bad


def _yaml_text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def check_range(key: str, value: Any, rng: Range | None, default: Any, source: str, meaning: str = "") -> None:
    """Raise ConfigError naming the key, the value, the allowed range and a fix when `value` (already
    coerced to its field type) lies outside `rng`. Floats must be finite even without a declared range."""
    fix = (f" ({meaning})" if meaning else "") + (
        f"; set a value in range, e.g. {key}={_yaml_text(default)} (the default)" if default is not MISSING else "")
    rng = rng or Range()
    if isinstance(value, list):
        if rng.length is not None and len(value) != rng.length:
            raise ConfigError(f"config key '{key}' (from {source}) must hold exactly {rng.length} "
                              f"item{'s' if rng.length != 1 else ''}, got {len(value)}: {_yaml_text(value)}{fix}")
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    else:
        items = [(key, value)]
    for name, v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, int) and not rng.bounded()):
            continue
        if not rng.ok(v):
            finite = " and finite" if isinstance(v, float) and rng.bounded() else ""
            if isinstance(v, float) and math.isfinite(v) and abs(v) > FLOAT32_MAX:
                finite += f", at most {FLOAT32_MAX:.7g} in size (torch computes it in float32)"
            raise ConfigError(f"config key '{name}' (from {source}) must be {rng.describe()}{finite}, got {v!r}{fix}")


def apply(cfg, flat: dict[str, Any], source: str, sources: dict[str, str] | None = None):
    """Set dotted keys on a config instance, strictly; `sources` (if given) records key -> source."""
    keys, limits = schema(type(cfg)), ranges(type(cfg))
    for key, value in flat.items():
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else "; run with --help to list the keys"
            raise ConfigError(f"unknown config key '{key}' (from {source}){hint}")
        value = _coerce(key, value, keys[key][0])
        check_range(key, value, limits.get(key), keys[key][1], source, keys[key][2])
        put(cfg, key, value)
        if sources is not None:
            sources[key] = source
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict):
    return apply(cls(), flatten(d), "checkpoint")


def dump_yaml(cfg, sources: dict[str, str] | None = None) -> str:
    """The config as YAML; with `sources`, each value set by a layer ends in `# from <source>`."""
    if sources is None:
        return yaml.safe_dump(to_dict(cfg), sort_keys=False)
    return "".join(_annotated(to_dict(cfg), sources))


def _annotated(d: dict, sources: dict[str, str], prefix: str = "", indent: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield f"{indent}{k}:\n"
            yield from _annotated(v, sources, f"{prefix}{k}.", indent + "  ")
            continue
        text = yaml.safe_dump(v, default_flow_style=True, width=1 << 20).strip()
        text = text[:-3].rstrip() if text.endswith("\n...") else text  # a plain scalar ends the document
        note = f"  # from {sources[prefix + k]}" if prefix + k in sources else ""
        yield f"{indent}{k}: {text}{note}\n"
