"""Config: dataclass schema <- recipe YAML <- each --config FILE in order <- dotted CLI overrides.

The dataclasses are the schema. A field's trailing comment is its `--help` text,
so defaults, units and meaning live in one place. YAML files hold only the
differences from what they layer on (a `base:` key names the YAML they extend);
`key=value` arguments on the command line win. Where each value came from is kept
(Cli.sources) for `--dry-run`.
Unknown keys and wrong types are errors that name the key and the fix.
The command line and YAML files (layering, base:, provenance, --help) are common/cli.py.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal



class UserError(Exception):
    """A problem the user can fix; the message names it and the fix. Shown without a traceback."""


class ConfigError(UserError, ValueError):
    """A config problem the user can fix; the message says how."""


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # mnist | fashion_mnist | cifar10 | cifar100 | synthetic
    root: str = "data"  # dataset directory (relative to the working directory or absolute)
    download: bool = False  # fetch the dataset with torchvision if missing (needs internet)
    augment: bool = False  # random crop (padding 4) + horizontal flip, done on the device
    drop_last: bool = True  # train: drop the last incomplete global batch (False: keep it, padded to equal shards)
    in_memory: bool = True  # keep the whole dataset as one uint8 tensor on the GPU when it fits in a quarter of its free memory (else pinned host memory, batches copied without blocking); false = always host
    synthetic_train: int = 4096  # synthetic dataset: number of training samples
    synthetic_test: int = 1024  # synthetic dataset: number of test samples
    synthetic_shape: list[int] = field(default_factory=lambda: [1, 28, 28])  # synthetic dataset: C, H, W
    synthetic_classes: int = 10  # synthetic dataset: number of classes


@dataclass
class TrainConfig:
    epochs: int = 1  # passes over the training set (ignored when max_steps > 0)
    max_steps: int = 0  # stop after this many optimizer steps; 0 = run `epochs` epochs
    batch_size: int = 128  # GLOBAL batch per optimizer step, summed over ranks and accumulation
    grad_accum: int = 1  # micro-batches per optimizer step
    eval_batch_size: int = 1024  # global evaluation batch
    clip_grad_norm: float = 0.0  # clip the global grad norm to this value after unscaling; 0 = off
    ema_decay: float = 0.0  # EMA of weights, evaluated and checkpointed; 0 = off
    log_every_steps: int = 50  # reduce and log training metrics every N optimizer steps
    eval_every_steps: int = 0  # evaluate every N steps; 0 = at the end of each epoch
    ckpt_every_steps: int = 0  # checkpoint every N steps; 0 = at the end of each epoch
    compile: bool = False  # torch.compile the model(s)
    channels_last: bool | Literal["auto"] = "auto"  # NHWC memory format for models and image batches; auto = on for CUDA (faster convolutions), off elsewhere
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    progress: bool = True  # tqdm progress bar on rank 0 when stderr is a terminal
    max_nonfinite_steps: int = 5  # stop when train_step returns NaN/inf this many optimizer steps in a row


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw", "adam"] = "sgd"  # optimizer
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    weight_decay: float = 0.0  # decoupled for AdamW, L2 for SGD
    decay_norm_and_bias: bool = False  # also apply weight decay to norm layers and biases
    schedule: Literal["constant", "cosine", "step", "onecycle"] = "cosine"  # LR schedule, stepped per optimizer step
    warmup_steps: int = 0  # linear warmup from 0 to lr (constant/cosine/step)
    step_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step schedule: fractions of training
    step_gamma: float = 0.1  # step schedule: LR factor at each milestone
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of lr


@dataclass
class CkptConfig:
    keep_last: int = 3  # keep the newest N checkpoints (plus the best)
    best_metric: str = "val/acc1"  # metric that decides the best checkpoint ("" = none)
    best_mode: Literal["max", "min"] = "max"  # whether larger or smaller best_metric is better


@dataclass
class BaseConfig:
    seed: int = 0  # seeds weights, data order and augmentation
    out_dir: str = "runs/{recipe}"  # run directory: config.yaml, metrics.jsonl, tb/, checkpoints/; {recipe} = the script's name
    resume: str = "auto"  # auto (newest valid checkpoint in out_dir) | none | path to a checkpoint
    engine: str = "auto"  # ddp | accelerate | deepspeed (common/engines/__init__.py lists them); auto = from the launcher (accelerate launch, deepspeed), else ddp
    deepspeed_config: str = "launch/deepspeed/zero2.json"  # engine=deepspeed: DeepSpeed JSON (ZeRO stage, bf16/fp16); relative to the working directory or the repo
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; fp16 adds a GradScaler
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto = cuda if present, else mps, else cpu
    dist_timeout_s: int = 600  # collective timeout: a hung rank fails the job instead of blocking forever
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)


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


def _coerce(key: str, value: Any, tp) -> Any:
    """Check `value` against the field type; the only conversions are int -> float and scalars -> str."""
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
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        return str(value)
    raise bad


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply(cfg, flat: dict[str, Any], source: str, sources: dict[str, str] | None = None):
    """Set dotted keys on a config instance, strictly; `sources` (if given) records key -> source."""
    keys = schema(type(cfg))
    for key, value in flat.items():
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else "; run with --help to list the keys"
            raise ConfigError(f"unknown config key '{key}' (from {source}){hint}")
        target = cfg
        for part in key.split(".")[:-1]:
            target = getattr(target, part)
        setattr(target, key.split(".")[-1], _coerce(key, value, keys[key][0]))
        if sources is not None:
            sources[key] = source
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict):
    return apply(cls(), _flatten(d), "checkpoint")
