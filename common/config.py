"""Config: dataclass schema <- recipe YAML <- each --config FILE in order <- dotted CLI overrides.

The dataclasses are the schema. A field's trailing comment is its `--help` text,
so defaults, units and meaning live in one place. YAML files hold only the
differences from what they layer on (a `base:` key names the YAML they extend);
`key=value` arguments on the command line win. Where each value came from is kept
(Cli.sources) for `--dry-run`.
Unknown keys and wrong types are errors that name the key and the fix.
Longer than most modules (about 320 lines) on purpose: the shared sections, the schema walker,
type checks, YAML and the command line are one contract, read together.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


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


# ----------------------------------------------------------------------------- CLI

@dataclass
class Cli:
    cfg: Any
    recipe: str  # the script's name, e.g. "mnist_cnn"; checkpoints record it
    dry_run: bool
    config_files: list[Path]  # every YAML applied, in order: the recipe's, then each --config (bases before each)
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> where its value came from; absent = schema default


BASE_KEY = "base"  # in a YAML: the file it extends, relative to the YAML's own directory


def _parse_value(text: str) -> Any:
    # YAML scalars: 0.05 -> float, true -> bool, [1,2] -> list, anything else stays a string.
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _show(path: Path) -> str:
    """A path as short as it can be said: relative to the working directory when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(Path(path).resolve())


def load_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The layers one YAML file stands for, base first: [(file, flat keys), ...].

    `base: FILE` names the YAML this one extends (a path relative to this file's directory),
    so a variant (a cluster or debug config) holds only its differences."""
    path = Path(path)
    if not path.is_file():
        named_by = f" (named by 'base:' in {_show(_chain[-1])}; base paths are relative to that file's directory)" \
            if _chain else ""
        raise ConfigError(f"config file not found: {path}{named_by}")
    resolved = path.resolve()
    if resolved in _chain:
        loop = " -> ".join(_show(p) for p in (*_chain[_chain.index(resolved):], resolved))
        raise ConfigError(f"config files extend each other in a cycle: {loop}; remove the 'base:' key from one of them")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    base = data.pop(BASE_KEY, None)
    layers = []
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"'base' in {path} must name a YAML file, got {base!r}; write e.g. "
                              f"'base: resnet_cifar.yaml' (relative to {_show(path.parent)})")
        base_path = Path(base).expanduser()
        layers = load_yaml(base_path if base_path.is_absolute() else path.parent / base_path, (*_chain, resolved))
    return [*layers, (path, _flatten(data))]


def help_text(cls, prog: str, default_file: Path | None) -> str:
    lines = [
        f"usage: {prog} [--config FILE ...] [--dry-run] [key=value ...]",
        "",
        f"Values come from the schema defaults below, then {_show(default_file) if default_file else '(no recipe YAML)'},",
        "then each --config FILE in order, then key=value; later layers win.",
        "  --config FILE   YAML layered on the recipe's YAML (repeatable); 'base: other.yaml' in a YAML",
        "                  names a file it extends (relative to the YAML's own directory)",
        "  --dry-run       print the resolved config with where each value came from, the",
        "                  rank/world/device mapping and warnings about the schedule, then exit",
        "",
        "config keys (default) meaning:",
    ]
    rows = schema(cls)
    width = max(len(k) for k in rows)
    for key, (tp, default, text) in rows.items():
        lines.append(f"  {key:<{width}}  ({default!r}) {text} [{_type_name(tp)}]")
    return "\n".join(lines)


def parse_cli(cls, script: str, argv: list[str] | None = None) -> Cli:
    """`python recipes/<name>.py [--config FILE ...] [--dry-run] [key=value ...]`.

    Layers, later wins: the schema defaults; recipes/configs/<name>.yaml next to the script
    (always, when it exists); each `--config FILE` in order; `key=value`. Each YAML's `base:`
    files come just before it. Errors raise ConfigError (common/entry.py turns them into exit code 2).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    script_path = Path(script).resolve()
    recipe = script_path.stem
    default_file = script_path.parent / "configs" / f"{recipe}.yaml"
    recipe_file = default_file if default_file.is_file() else None
    dry_run, overrides, config_args = False, {}, []
    it = iter(argv)
    for arg in it:
        if arg in ("-h", "--help"):
            print(help_text(cls, f"python {Path(script).name}", recipe_file))
            raise SystemExit(0)
        if arg == "--dry-run":
            dry_run = True
        elif arg.startswith(("--local_rank", "--local-rank")):
            # The `deepspeed` launcher appends --local_rank=N; the same value is in $LOCAL_RANK.
            if "=" not in arg:
                next(it, None)
        elif arg == "--config" or arg.startswith("--config="):
            value = arg.split("=", 1)[1] if "=" in arg else next(it, None)
            if not value:
                raise ConfigError("--config needs a file path: --config FILE")
            config_args.append(Path(value))
        elif "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            overrides[key.strip()] = _parse_value(value)
        else:
            raise ConfigError(f"unexpected argument '{arg}': use key=value, --config FILE, --dry-run or --help")
    cfg, sources, files = cls(), {}, []
    for kind, top in ([("recipe YAML", recipe_file)] if recipe_file else []) + [("--config", f) for f in config_args]:
        layers = load_yaml(top)
        for i, (path, flat) in enumerate(layers):
            label = f"{kind} {_show(path)}" if i == len(layers) - 1 else \
                f"{_show(path)} (base of {layers[i + 1][0].name})"
            apply(cfg, flat, label, sources)
            files.append(path)
    apply(cfg, overrides, "the command line", sources)
    cfg.out_dir = cfg.out_dir.replace("{recipe}", recipe)
    validate(cfg)
    return Cli(cfg=cfg, recipe=recipe, dry_run=dry_run, config_files=files, sources=sources)


def validate(cfg) -> None:
    t = cfg.train
    for key in ("batch_size", "grad_accum", "eval_batch_size", "log_every_steps"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
    if t.max_steps <= 0 and t.epochs <= 0:
        raise ConfigError("set train.epochs >= 1 or train.max_steps >= 1")
    if cfg.resume not in ("auto", "none") and not Path(cfg.resume).exists():
        raise ConfigError(f"resume={cfg.resume!r} is neither 'auto', 'none' nor an existing checkpoint path")


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
