"""The command line: `python recipes/<name>.py [--config FILE ...] [--dry-run] [key=value ...]`, or after
training `--evaluate RUN_OR_CHECKPOINT` / `--export RUN_OR_CHECKPOINT [--to FILE]` /
`--predict RUN_OR_CHECKPOINT_OR_EXPORT --input PATH [--top-k K] [--to FILE]` (common/lifecycle/).

Values layer: schema defaults <- recipes/configs/<name>.yaml <- each --config FILE in order (each
YAML may name a `base:` it extends) <- key=value. Every value remembers where it came from, for
--dry-run and config.yaml. Errors are ConfigError (common/entry.py makes them exit code 2).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


from common.config import ConfigError, flatten, type_name, apply, ranges, schema
from common.fields import roles
from common.userfiles import problem

@dataclass
class Cli:
    cfg: Any
    recipe: str  # the script's name, e.g. "mnist_cnn"; checkpoints record it
    dry_run: bool
    config_files: list[Path]  # every YAML applied, in order: the recipe's, then each --config (bases before each)
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> where its value came from; absent = schema default
    user_keys: set[str] = field(default_factory=set)  # keys set by a --config file (or its bases) or key=value
    action: str = "train"  # train | evaluate | export | predict
    source: Path | None = None  # --evaluate / --export / --predict: the run directory or checkpoint (--predict: or an export)
    to: Path | None = None  # --export / --predict --to FILE
    replace: bool = False  # --export / --predict --overwrite: an existing file may be replaced
    input: Path | None = None  # --predict --input PATH: an image, a directory tree of images, or a text file of paths
    top_k: int = 5  # --predict --top-k K: classes (with probabilities) per image
    weights: str | None = None  # --weights ema|raw; None = the EMA copy when the checkpoint has one


BASE_KEY = "base"  # in a YAML: the file it extends, relative to the YAML's own directory


class _UniqueKeys(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last silently,
    dropping e.g. a whole first `train:` block)."""
    path: Path

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"config file {self.path} gives key '{key}' twice (lines {seen[key]} and {line}); "
                                  "YAML would silently keep only the second: merge them into one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def _safe_load_unique(text: str, path: Path) -> Any:
    loader = _UniqueKeys(text)
    loader.path = path
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
    if path.is_dir():
        yamls = sorted(p.name for p in path.glob("*.yaml"))
        raise ConfigError(f"config file {path} is a directory: name a YAML file"
                          + (f" in it, e.g. {path / yamls[0]}" if yamls else ""))
    if not path.is_file():
        named_by = f" (named by 'base:' in {_show(_chain[-1])}; base paths are relative to that file's directory)" \
            if _chain else ""
        raise ConfigError(f"config file not found: {path}{named_by}")
    resolved = path.resolve()
    if resolved in _chain:
        loop = " -> ".join(_show(p) for p in (*_chain[_chain.index(resolved):], resolved))
        raise ConfigError(f"config files extend each other in a cycle: {loop}; remove the 'base:' key from one of them")
    if path.stat().st_size == 0:  # what an interrupted copy leaves; a file of comments only sets nothing, knowingly
        raise ConfigError(f"config file {path} is empty: 0 bytes, as an interrupted copy leaves; copy it again, "
                          "or drop --config for it")
    try:
        data = _safe_load_unique(path.read_text(), path) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read ({problem(path, e)})") from None
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
    return [*layers, (path, flatten(data))]


def help_text(cls, prog: str, default_file: Path | None) -> str:
    lines = [
        f"usage: {prog} [--config FILE ...] [--dry-run] [key=value ...]",
        f"       {prog} --evaluate RUN_DIR_OR_CHECKPOINT [--weights ema|raw] [key=value ...]",
        f"       {prog} --export RUN_DIR_OR_CHECKPOINT [--to FILE] [--overwrite] [--weights ema|raw]",
        f"       {prog} --predict RUN_DIR_OR_CHECKPOINT_OR_EXPORT --input PATH [--top-k 5] [--to FILE.csv] [--overwrite]",
        "",
        f"Values come from the schema defaults below, then {_show(default_file) if default_file else '(no recipe YAML)'},",
        "then each --config FILE in order, then key=value; later layers win.",
        "  --config FILE   YAML layered on the recipe's YAML (repeatable); 'base: other.yaml' in a YAML",
        "                  names a file it extends (relative to the YAML's own directory)",
        "  --dry-run       print the resolved config with where each value came from, the",
        "                  rank/world/device mapping and warnings about the schedule, then exit",
        "  --evaluate RUN  evaluate a run directory (its best, else newest valid checkpoint) or a",
        "                  checkpoint on the eval split; the model config comes from the checkpoint",
        "  --export RUN    write its weights as a plain state_dict with inference metadata;",
        "                  --to FILE (.safetensors or .pt) names the file, or a program checked",
        "                  against eager: .pt2 (torch.export) or .onnx; --overwrite replaces",
        "                  an existing one (without it an existing file is an error)",
        "  --predict RUN   classify image files with a run, a checkpoint or an --export file: --input",
        "                  an image, a directory tree of images or a text file of paths; one CSV row",
        "                  per image (top --top-k classes and probabilities), --to FILE (default:",
        "                  RUN/predictions/<input name>.csv, or beside the export file)",
        "  --weights W     with --evaluate/--export/--predict: ema or raw (default: ema when the run kept one)",
        "",
        "config keys (default) meaning [type, range] {role}. Roles (docs/usage.md): 'fixed on resume': a resume",
        "that changes it is refused; 'not compared on resume': where a run lives or starts from; 'training-only':",
        "--evaluate and --export ignore it; '--evaluate may set it'. Any other key may change on resume, and",
        "--evaluate and --export refuse a value other than the checkpoint's.",
    ]
    rows, limits, keys = schema(cls), ranges(cls), roles(cls)
    width = max(len(k) for k in rows)
    for key, (tp, default, text) in rows.items():
        rng = limits.get(key)
        extra = ""
        if rng is not None:
            extra = ", ".join(([f"{rng.length} items"] if rng.length is not None else []) +
                              ([("each " if rng.length is not None or isinstance(default, list) else "") + rng.describe()]
                               if rng.bounded() else []))
        role = keys[key].describe()
        lines.append(f"  {key:<{width}}  ({default!r}) {text} [{type_name(tp)}{', ' + extra if extra else ''}]"
                     + (f" {{{role}}}" if role else ""))
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
    after: dict[str, str] = {}  # --evaluate / --export / --to / --weights -> value
    it = iter(argv)
    for arg in it:
        if arg in ("-h", "--help"):
            print(help_text(cls, f"python {Path(script).name}", recipe_file))
            raise SystemExit(0)
        if arg == "--dry-run":
            dry_run = True
        elif arg == OVERWRITE:
            after[OVERWRITE] = ""
        elif arg.split("=", 1)[0] in AFTER_TRAINING:
            flag = arg.split("=", 1)[0]
            value = arg.split("=", 1)[1] if "=" in arg else next(it, None)
            if not value or flag in after:
                raise ConfigError(f"{flag} needs one value: {flag} {AFTER_TRAINING[flag]}")
            after[flag] = value
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
            raise ConfigError(f"unexpected argument '{arg}': use key=value, --config FILE, --dry-run, --evaluate RUN, "
                              "--export RUN, --predict RUN --input PATH or --help")
    cfg, sources, files, user_keys = cls(), {}, [], set(overrides)
    for kind, top in ([("recipe YAML", recipe_file)] if recipe_file else []) + [("--config", f) for f in config_args]:
        layers = load_yaml(top)
        for i, (path, flat) in enumerate(layers):
            label = f"{kind} {_show(path)}" if i == len(layers) - 1 else \
                f"{_show(path)} (base of {layers[i + 1][0].name})"
            apply(cfg, flat, label, sources)
            files.append(path)
            user_keys |= set(flat) if kind == "--config" else set()
    apply(cfg, overrides, "the command line", sources)
    cfg.out_dir = cfg.out_dir.replace("{recipe}", recipe)
    validate(cfg)
    return Cli(cfg=cfg, recipe=recipe, dry_run=dry_run, config_files=files, sources=sources, user_keys=user_keys,
               **after_training(after, dry_run))


OVERWRITE = "--overwrite"  # with --export, --predict: replace an existing file (it takes no value)
AFTER_TRAINING = {"--evaluate": "RUN_DIR_OR_CHECKPOINT", "--export": "RUN_DIR_OR_CHECKPOINT",
                  "--predict": "RUN_DIR_OR_CHECKPOINT_OR_EXPORT", "--input": "PATH (an image, a directory or a text "
                  "file of paths)", "--top-k": "K (classes per image)", "--to": "FILE (--export: .safetensors, .pt, .pt2 or .onnx; --predict: a CSV)",
                  "--weights": "ema|raw"}
PREDICT_ONLY = ("--input", "--top-k")


def after_training(flags: dict[str, str], dry_run: bool) -> dict:
    """Cli fields for --evaluate / --export / --predict and the flags that go with them; misuse is a ConfigError."""
    actions = [f for f in ("--evaluate", "--export", "--predict") if f in flags]
    if len(actions) > 1:
        raise ConfigError(f"{' and '.join(actions)} are {['two', 'three'][len(actions) - 2]} commands: run them one after the other")
    if not actions:
        extra = [f for f in flags if f in ("--to", "--weights", OVERWRITE, *PREDICT_ONLY)]
        if extra:
            flag, only = extra[0], extra[0] in PREDICT_ONLY
            raise ConfigError(f"{flag} goes with {'--predict' if only else '--export'}"
                              f"{' or --evaluate' if flag == '--weights' else ''}{'' if only else ' or --predict'}: e.g. "
                              f"{'--predict' if only else '--export'} runs/<name> {flag} "
                              f"{AFTER_TRAINING.get(flag, '').split(' ')[0]}".rstrip())
        return {}
    (action,) = actions
    if dry_run:
        raise ConfigError(f"--dry-run is for training; {action} reads the checkpoint's config: drop --dry-run")
    for flag in ("--to", OVERWRITE):
        if flag in flags and action == "--evaluate":
            raise ConfigError(f"{flag} is about the file --export or --predict writes; --evaluate appends its row to "
                              "the run's metrics.jsonl")
    for flag in PREDICT_ONLY:
        if flag in flags and action != "--predict":
            raise ConfigError(f"{flag} goes with --predict: --predict RUN --input PATH {flag} ...")
    weights = flags.get("--weights")
    if weights not in (None, "ema", "raw"):
        raise ConfigError(f"--weights {weights!r}: use --weights ema (the run's EMA copy) or --weights raw")
    to = flags.get("--to")
    return {"action": action[2:], "source": Path(flags[action]), "to": Path(to) if to else None, "weights": weights,
            "replace": OVERWRITE in flags, **(predict_flags(flags) if action == "--predict" else {})}


def predict_flags(flags: dict[str, str]) -> dict:
    if "--input" not in flags:
        raise ConfigError(f"--predict needs the images: --predict {flags['--predict']} --input PATH (an image, a "
                          "directory tree of images, or a text file of paths)")
    k = flags.get("--top-k", "5")
    if not k.isdigit() or int(k) < 1:
        raise ConfigError(f"--top-k {k!r}: give a whole number of classes >= 1, e.g. --top-k 5")
    return {"input": Path(flags["--input"]), "top_k": int(k)}


def validate(cfg) -> None:
    # Each value's own range (train.batch_size >= 1, optim.lr > 0, ...) is checked as it is set
    # (common.config.ranged); here only what involves several keys.
    t = cfg.train
    if t.max_steps <= 0 and t.epochs <= 0:
        raise ConfigError("set train.epochs >= 1 or train.max_steps >= 1")
    if cfg.resume not in ("auto", "none") and not Path(cfg.resume).exists():
        raise ConfigError(f"resume={cfg.resume!r} is neither 'auto', 'none' nor an existing checkpoint path")
