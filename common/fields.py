"""How a config field is declared, and the declarations read back as flat maps keyed by dotted key.

A field's trailing `# comment` is its `--help` line; `ranged(...)` declares its range.
The dotted-key helpers (flatten, get, put) are the one walk between dotted keys and nested values.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any

FLOAT32_MAX = 3.4028234663852886e38  # torch computes in float32: a larger hyperparameter overflows at the first step


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


@dataclass(frozen=True)
class Range:
    """The values a number (or each item of a list of numbers) may take, and a list's length.
    `apply` checks every value it sets, the recipes' own sections (model.dropout) included."""
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    lt: float | None = None  # value < lt
    length: int | None = None  # a list holds exactly this many items

    def describe(self) -> str:
        lo = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None
        hi = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>=' if self.ge is not None else '>'} {lo[1:]}"
        if hi:
            return f"{'<=' if self.le is not None else '<'} {hi[:-1]}"
        return "finite"

    def ok(self, v: float) -> bool:
        return (math.isfinite(v) and (isinstance(v, int) or abs(v) <= FLOAT32_MAX)
                and (self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def bounded(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))


def ranged(default: Any = MISSING, *, factory: Any = MISSING, ge=None, gt=None, le=None, lt=None,
           length: int | None = None):
    """A dataclass field whose value (each item, for a list) must lie in a range; `length`: a list's size.

        lr: float = ranged(0.1, gt=0, le=LR_MAX)  # peak learning rate
        betas: list[float] = ranged(factory=lambda: [0.9, 0.999], length=2, ge=0, lt=1)  # Adam betas
    """
    return field(default=default, default_factory=factory,
                 metadata={"range": Range(ge=ge, gt=gt, le=le, lt=lt, length=length)})


# ----------------------------------------------------------------------------- reading the declarations

def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def field_help(cls) -> dict[str, str]:
    """Trailing `# comment` of each field, read from the class source (and its bases)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", src, re.M):
            out[m.group(1)] = m.group(2).strip()
    return out


def schema(cls, prefix: str = "") -> dict[str, tuple[Any, Any, str]]:
    """Flat map dotted key -> (type, default, help) for every leaf field."""
    hints, helps, out = typing.get_type_hints(cls), field_help(cls), {}
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            out.update(schema(tp, prefix + f.name + "."))
        else:
            out[prefix + f.name] = (tp, getattr(defaults, f.name), helps.get(f.name, ""))
    return out


def ranges(cls, prefix: str = "") -> dict[str, Range]:
    """Flat map dotted key -> Range for every leaf field declared with ranged(...)."""
    hints, out = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if _is_dataclass_type(hints[f.name]):
            out.update(ranges(hints[f.name], prefix + f.name + "."))
        elif "range" in f.metadata:
            out[prefix + f.name] = f.metadata["range"]
    return out


# ----------------------------------------------------------------------------- dotted keys

def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted key: leaf value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def get(cfg, key: str) -> Any:
    """The value at a dotted key of a config instance."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def put(cfg, key: str, value: Any) -> None:
    """Set the value at a dotted key of a config instance (no checks: `apply` is the checked way)."""
    *path, last = key.split(".")
    setattr(get(cfg, ".".join(path)) if path else cfg, last, value)
