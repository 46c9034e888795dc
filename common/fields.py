"""How a config field is declared, and the declarations read back as flat maps keyed by dotted key.

A field's trailing `# comment` is its `--help` line; `setting(...)` (or its alias `ranged`) declares
its range and its roles: fixed on resume or not compared there, applied or ignored by --evaluate and
--export, and the override under which it is read at all. A section field's roles pass to every key
in it, and a field redeclared in a subclass keeps what its base declared unless it declares its own,
so each fact about a key is said once, next to it (docs/usage.md, "Declaring a key").
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


# ----------------------------------------------------------------------------- roles

OWN_FORMAT = "own format"  # Fixed(engine=...): the checkpoint's or this run's engine keeps its own format


@dataclass(frozen=True)
class Fixed:
    """Fixed on resume: a resume that changes the key is refused, naming what it decides (`why`)."""
    why: str
    engine: str = ""  # fixed only under this engine (its name), or OWN_FORMAT; "" = under every engine


MAY_CHANGE = "may change"  # resume: a change takes effect and is logged (the default)
NOT_COMPARED = "not compared"  # resume: where the run lives or what it starts from, not how it trains
MUST_MATCH = "must match"  # --evaluate/--export: defines the model or its eval data (the default)
APPLIED = "applied"  # --evaluate/--export: this command's value is used (device, data.root, ...)
IGNORED = "ignored"  # --evaluate/--export: training-only; a value given is ignored, and the command says so


@dataclass(frozen=True)
class Role:
    """What a key is to a resume, to --evaluate and --export, and when it is read at all."""
    resume: Fixed | str = MAY_CHANGE
    evaluate: str = MUST_MATCH
    read_when: str = ""  # the override under which it is read (e.g. optim.name=sgd); "" = always

    def describe(self) -> str:
        """The roles --help shows: only those that are not the defaults."""
        out = []
        if isinstance(self.resume, Fixed):
            engine = self.resume.engine
            out.append("fixed on resume" + (" where an engine keeps its own format" if engine == OWN_FORMAT
                                            else f" under engine={engine}" if engine else ""))
        elif self.resume == NOT_COMPARED:
            out.append("not compared on resume")
        out += {APPLIED: ["--evaluate may set it"], IGNORED: ["training-only"]}.get(self.evaluate, [])
        return "; ".join(out)


def setting(default: Any = MISSING, *, factory: Any = MISSING, resume: Fixed | str | None = None,
            evaluate: str | None = None, read_when: str | None = None, ge=None, gt=None, le=None, lt=None,
            length: int | None = None):
    """A dataclass field with its declared range (each item's, for a list; `length`: a list's size) and
    roles (Role); a role left out is its base declaration's, else its section's, else the default.

        lr: float = setting(0.1, gt=0, le=LR_MAX)  # peak learning rate
        name: str = setting("mnist", resume=Fixed("the dataset"))  # the dataset
        train: TrainConfig = setting(factory=TrainConfig, evaluate=IGNORED)
    """
    given = {k: v for k, v in (("resume", resume), ("evaluate", evaluate), ("read_when", read_when)) if v is not None}
    rng = Range(ge=ge, gt=gt, le=le, lt=lt, length=length)
    return field(default=default, default_factory=factory,
                 metadata={"roles": given, **({"range": rng} if rng != Range() else {})})


ranged = setting  # the name the declarations whose point is a range use


# ----------------------------------------------------------------------------- reading the declarations

def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _declared(cls, name: str) -> dict:
    """The metadata of field `name`, its bases' first and each redeclaration's on top of them."""
    out: dict = {}
    for klass in reversed(cls.__mro__):
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None:
            out = {**out, **f.metadata, "roles": {**out.get("roles", {}), **f.metadata.get("roles", {})}}
    return out


def _leaves(cls, prefix: str = "", outer: dict | None = None):
    """(dotted key, declared metadata with the sections' roles under the field's own) for each leaf."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = _declared(cls, f.name)
        merged = {**(outer or {}), **meta.get("roles", {})}
        if _is_dataclass_type(hints[f.name]):
            yield from _leaves(hints[f.name], prefix + f.name + ".", merged)
        else:
            yield prefix + f.name, {**meta, "roles": merged}


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


def ranges(cls) -> dict[str, Range]:
    """Flat map dotted key -> Range for every leaf field declared with a range."""
    return {key: meta["range"] for key, meta in _leaves(cls) if "range" in meta}


def roles(cls) -> dict[str, Role]:
    """Flat map dotted key -> Role for every leaf field."""
    return {key: Role(**meta["roles"]) for key, meta in _leaves(cls)}


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
