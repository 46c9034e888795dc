"""Config: dataclass schema <- recipe YAML <- each --config FILE in order <- dotted CLI overrides.

The dataclasses are the schema. A field's trailing comment is its `--help` text,
so defaults, units and meaning live in one place. YAML files hold only the
differences from what they layer on (a `base:` key names the YAML they extend);
`key=value` arguments on the command line win. Where each value came from is kept
(Cli.sources) for `--dry-run`.
Unknown keys, wrong types and values outside a field's declared range (`ranged(...)`) are errors that
name the key and the fix.
The command line and YAML files (layering, base:, provenance, --help) are common/cli.py.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
import math
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal

import yaml


class UserError(Exception):
    """A problem the user can fix; the message names it and the fix. Shown without a traceback."""


# How to start over where a run's checkpoints exist (resume=none alone is refused there: common/train/rundir.py).
START_OVER = "start over in a new out_dir, or here with resume=none overwrite=true (which moves this run's files aside)"


class ConfigError(UserError, ValueError):
    """A config problem the user can fix; the message says how."""


# ----------------------------------------------------------------------------- ranges

FLOAT32_MAX = 3.4028234663852886e38  # torch computes in float32: a larger hyperparameter overflows at the first step
# Adam divides lr by 1 - beta1 (at least 2**-53 for a float below 1): the quotient must fit float32 too.
LR_MAX = FLOAT32_MAX * 2**-53
SEED_MAX = 2**64 - 1  # torch.manual_seed and torch.Generator take 64 bits


def seed_bits(value: int) -> int:
    """A seed derived from `seed` (seed * k + epoch, ...) folded into torch's 64 bits: unchanged below 2**64."""
    return value % (SEED_MAX + 1)


def _num(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


@dataclass(frozen=True)
class Range:
    """The values a number (or each item of a list of numbers) may take, and a list's length.

    Declared next to its field with `ranged(...)`; `apply` checks every value it sets, so a
    recipe's own config dataclasses (model.dropout, model.channels) are checked the same way."""
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


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # mnist | fashion_mnist | cifar10 | cifar100 | synthetic
    root: str = "data"  # dataset directory (relative to the working directory or absolute)
    download: bool = False  # fetch the dataset with torchvision if missing (needs internet)
    augment: bool = False  # random crop (padding 4) + horizontal flip, done on the device
    drop_last: bool = True  # train: drop the last incomplete global batch (False: keep it, padded to equal shards)
    in_memory: bool = True  # keep the whole dataset as one uint8 tensor on the GPU when it fits in a quarter of its free memory (else pinned host memory, batches copied without blocking); false = always host
    synthetic_train: int = ranged(4096, ge=1)  # synthetic dataset: number of training samples
    synthetic_test: int = ranged(1024, ge=1)  # synthetic dataset: number of test samples
    synthetic_shape: list[int] = ranged(factory=lambda: [1, 28, 28], length=3, ge=1)  # synthetic dataset: C, H, W
    synthetic_classes: int = ranged(10, ge=1)  # synthetic dataset: number of classes


@dataclass
class TrainConfig:
    epochs: int = ranged(1, ge=0)  # passes over the training set (ignored when max_steps > 0)
    max_steps: int = ranged(0, ge=0)  # stop after this many optimizer steps; 0 = run `epochs` epochs
    batch_size: int = ranged(128, ge=1)  # GLOBAL batch per optimizer step, summed over ranks and accumulation
    grad_accum: int = ranged(1, ge=1)  # micro-batches per optimizer step
    eval_batch_size: int = ranged(1024, ge=1)  # global evaluation batch
    clip_grad_norm: float = ranged(0.0, ge=0)  # clip the global grad norm to this value after unscaling; 0 = off
    ema_decay: float = ranged(0.0, ge=0, lt=1)  # EMA of weights, evaluated and checkpointed; 0 = off
    log_every_steps: int = ranged(50, ge=1)  # reduce and log training metrics every N optimizer steps
    eval_every_steps: int = ranged(0, ge=0)  # evaluate every N steps; 0 = at the end of each epoch
    ckpt_every_steps: int = ranged(0, ge=0)  # checkpoint every N steps; 0 = at the end of each epoch
    compile: bool = False  # torch.compile the model(s)
    channels_last: bool | Literal["auto"] = "auto"  # NHWC memory format for models and image batches; auto = on for CUDA (faster convolutions), off elsewhere
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    activation_checkpointing: bool = False  # recompute each block's activations in backward instead of storing them (less memory, ~1/3 more compute); engines ddp, accelerate, fsdp
    progress: bool = True  # tqdm progress bar on rank 0 when stderr is a terminal
    max_nonfinite_steps: int = ranged(5, ge=1)  # stop when train_step returns NaN/inf this many optimizer steps in a row
    profile_steps: int = ranged(0, ge=0)  # record this many optimizer steps with torch.profiler on every rank, into out_dir/profile/ (docs/performance.md); 0 = off
    profile_start: int = ranged(10, ge=0)  # the first optimizer step recorded (0-based; the first steps are warm-up)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw", "adam"] = "sgd"  # optimizer
    lr: float = ranged(0.1, gt=0, le=LR_MAX)  # peak learning rate
    momentum: float = ranged(0.9, ge=0, lt=1)  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    betas: list[float] = ranged(factory=lambda: [0.9, 0.999], length=2, ge=0, lt=1)  # Adam betas
    weight_decay: float = ranged(0.0, ge=0)  # decoupled for AdamW, L2 for SGD
    decay_norm_and_bias: bool = False  # also apply weight decay to norm layers and biases
    schedule: Literal["constant", "cosine", "step", "onecycle"] = "cosine"  # LR schedule, stepped per optimizer step
    warmup_steps: int = ranged(0, ge=0)  # linear warmup from 0 to lr (constant/cosine/step)
    step_milestones: list[float] = ranged(factory=lambda: [0.5, 0.75], ge=0, le=1)  # step schedule: fractions of training
    step_gamma: float = ranged(0.1, gt=0)  # step schedule: LR factor at each milestone
    min_lr_ratio: float = ranged(0.0, ge=0, le=1)  # cosine: final lr as a fraction of lr


@dataclass
class CkptConfig:
    keep_last: int = ranged(3, ge=1)  # keep the newest N checkpoints (plus the best)
    best_metric: str | None = "val/acc1"  # metric that decides the best checkpoint, e.g. val/acc1; none (or empty) = no best checkpoint
    best_mode: Literal["max", "min"] = "max"  # whether larger or smaller best_metric is better
    async_save: bool = False  # engine=fsdp: write the sharded checkpoint in the background while training continues; it becomes a checkpoint only once every rank's write is complete


@dataclass
class FsdpConfig:
    reshard_after_forward: bool = True  # free each block's gathered parameters after its forward and gather again in backward (less memory, one more all-gather per block); false = keep them until backward (ZeRO-2-like)
    cpu_offload: bool = False  # keep sharded parameters, gradients and optimizer state in host memory (CUDA only); the optimizer steps on the CPU


@dataclass
class LogConfig:
    backends: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=lambda: ["tensorboard"])  # where rank 0 sends metrics besides metrics.jsonl; wandb/mlflow need `pip install -r requirements-trackers.txt`
    project: str = "dtrain"  # W&B project and MLflow experiment name (the run is named after out_dir)
    mlflow_uri: str = ""  # MLflow tracking URI (http://host:5000, sqlite:///path.db); empty = out_dir/mlflow.db (SQLite)


@dataclass
class BaseConfig:
    seed: int = ranged(0, ge=0, le=SEED_MAX)  # seeds weights, data order and augmentation
    out_dir: str = "runs/{recipe}"  # run directory: config.yaml, metrics.jsonl, tb/, checkpoints/; {recipe} = the script's name
    resume: str = "auto"  # auto (newest valid checkpoint in out_dir) | none | path to a checkpoint
    overwrite: bool = False  # starting from scratch in an out_dir holding another run's checkpoints: true = move that run's files to out_dir/previous-<time>/ first; false = refuse
    init_from: str = "none"  # start a fresh run from the weights (only) of a run dir, checkpoint or --export file; tensors of another shape (a head for another class count) keep their fresh init; a resume ignores it
    engine: str = "auto"  # ddp | accelerate | deepspeed | fsdp (common/engines/__init__.py lists them); auto = from the launcher (accelerate launch, deepspeed), else ddp
    deepspeed_config: str = "launch/deepspeed/zero2.json"  # engine=deepspeed: DeepSpeed JSON (ZeRO stage, bf16/fp16); relative to the working directory or the repo
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; fp16 adds a GradScaler
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto = cuda if present, else mps, else cpu
    dist_timeout_s: int = ranged(600, ge=1)  # collective timeout: a hung rank fails the job instead of blocking forever
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)  # engine=fsdp (common/engines/fsdp.py)
    log: LogConfig = field(default_factory=LogConfig)


# ----------------------------------------------------------------------------- schema

def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


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
    hints, helps, out = _hints(cls), field_help(cls), {}
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            out.update(schema(tp, prefix + f.name + "."))
        else:
            out[prefix + f.name] = (tp, getattr(defaults, f.name), helps.get(f.name, ""))
    return out


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def best_metric(cfg) -> tuple[str, str] | None:
    """cfg.ckpt.best_metric as (split, metric), e.g. ("val", "acc1"); None when there is no best checkpoint
    (none, empty, or null in YAML)."""
    name = cfg.ckpt.best_metric
    if name is None or name.strip().lower() in ("", "none", "null"):
        return None
    split, _, key = name.partition("/")
    return split, key


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
    bad = ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")
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


def ranges(cls, prefix: str = "") -> dict[str, Range]:
    """Flat map dotted key -> Range for every leaf field declared with ranged(...)."""
    hints, out = _hints(cls), {}
    for f in dataclasses.fields(cls):
        if _is_dataclass_type(hints[f.name]):
            out.update(ranges(hints[f.name], prefix + f.name + "."))
        elif "range" in f.metadata:
            out[prefix + f.name] = f.metadata["range"]
    return out


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


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply(cfg, flat: dict[str, Any], source: str, sources: dict[str, str] | None = None):
    """Set dotted keys on a config instance, strictly; `sources` (if given) records key -> source."""
    keys, limits = schema(type(cfg)), ranges(type(cfg))
    for key, value in flat.items():
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else "; run with --help to list the keys"
            raise ConfigError(f"unknown config key '{key}' (from {source}){hint}")
        target = cfg
        for part in key.split(".")[:-1]:
            target = getattr(target, part)
        value = _coerce(key, value, keys[key][0])
        check_range(key, value, limits.get(key), keys[key][1], source, keys[key][2])
        setattr(target, key.split(".")[-1], value)
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
