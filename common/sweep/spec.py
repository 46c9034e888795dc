"""A sweep spec (YAML): the recipe and its base config, the search space, the metric, the sampler and pruner.

load(path) reads and checks it all before any trial starts: a config key the recipe's Config lacks, a
value out of its range, an empty range, a log range from <= 0, a metric the recipe's Task.metrics does
not name, an unknown sampler or pruner. Each problem is a UserError naming the spec entry and the fix.
A parameter's type (float or int) is its config key's; other types take `choices`. The example and
every entry: docs/sweeps.md.
"""
from __future__ import annotations

import importlib.util
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.cli import parse_cli
from common.config import ConfigError, UserError, schema
from common.entry import Task
from common.train import trial as sweep_trial

CHECKOUT = Path(__file__).resolve().parents[2]  # recipes/<name>.py is found here when not under the working dir
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = tuple(sweep_trial.PRUNERS)  # the names each trial's run builds its pruner from
DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
ENTRIES = {"recipe", "config", "overrides", "metric", "direction", "n_trials", "sampler", "pruner", "params",
           "nproc_per_node", "slurm"}
SWEEP_OWNS = ("out_dir", "resume", "overwrite")  # each trial's run dir and its resume are the sweep's
GRID_MAX = 10_000  # an int range enumerated for the grid sampler


@dataclass
class Param:
    key: str  # the config key, e.g. optim.lr
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list = field(default_factory=list)

    def grid(self) -> list:
        """The finite set of values the grid sampler walks."""
        if self.kind == "categorical":
            return list(self.choices)
        return list(range(self.low, self.high + 1, self.step or 1))


@dataclass
class Spec:
    path: Path
    raw: dict  # the YAML as read: a re-run must give the same
    recipe: Path  # the recipe script
    task: Task
    configs: list[str]  # --config files, in order
    overrides: dict[str, Any]  # key=value for every trial
    metric: str  # val/<name>
    direction: str  # maximize | minimize
    n_trials: int
    sampler: dict  # {"name": ..., "seed": int, other keyword arguments of the Optuna sampler}
    pruner: dict  # {"name": ..., keyword arguments of the Optuna pruner}
    params: list[Param]
    nproc_per_node: int = 1
    slurm: dict = field(default_factory=dict)  # {"template": name in slurm/, "options": [sbatch options]}

    def base_args(self) -> list[str]:
        """The recipe's arguments every trial shares: --config files, then the spec's overrides."""
        out = [a for c in self.configs for a in ("--config", c)]
        return out + [f"{k}={arg(v)}" for k, v in self.overrides.items()]


def arg(value) -> str:
    """A value as a key=value override: YAML scalars (true, null, 0.001), a string as it is."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def _fail(path, what: str) -> UserError:
    return UserError(f"sweep spec {path}: {what}")


def load(path: str | Path) -> Spec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"sweep spec {path} cannot be read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise _fail(path, f"not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise _fail(path, "must be a mapping with recipe, metric, n_trials and params (docs/sweeps.md)")
    unknown = sorted(set(raw) - ENTRIES)
    if unknown:
        raise _fail(path, f"unknown entry '{unknown[0]}'; the entries are {', '.join(sorted(ENTRIES))}")
    for need in ("recipe", "params"):
        if need not in raw:
            raise _fail(path, f"'{need}' is missing (docs/sweeps.md has an example)")
    recipe = find_recipe(path, raw["recipe"])
    task = load_task(path, recipe)
    configs = raw.get("config") or []
    configs = [configs] if isinstance(configs, str) else configs
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(c, str) for c in configs):
        raise _fail(path, "'config' is a file or a list of files, 'overrides' a mapping of config keys to values")
    for key in SWEEP_OWNS:
        if key in overrides:
            raise _fail(path, f"overrides set '{key}': the sweep sets it for each trial (its run dir is "
                              "SWEEP/trials/<number>); remove it")
    metric, direction = check_metric(path, task, raw.get("metric"), raw.get("direction"))
    params = [make_param(path, task, k, v) for k, v in _mapping(path, raw["params"], "params").items()]
    if not params:
        raise _fail(path, "'params' is empty: name at least one config key to search over")
    spec = Spec(path=path, raw=raw, recipe=recipe, task=task, configs=configs, overrides=overrides, metric=metric,
                direction=direction, n_trials=0, sampler=named(path, raw.get("sampler", "tpe"), "sampler", SAMPLERS),
                pruner=named(path, raw.get("pruner", "none"), "pruner", PRUNERS), params=params,
                nproc_per_node=_positive(path, raw.get("nproc_per_node", 1), "nproc_per_node"),
                slurm=_mapping(path, raw.get("slurm") or {}, "slurm"))
    if set(spec.slurm) - {"template", "options"}:
        raise _fail(path, f"slurm has no entry '{sorted(set(spec.slurm) - {'template', 'options'})[0]}'; "
                          "it takes template (a file in slurm/) and options (a list of sbatch options)")
    spec.sampler.setdefault("seed", 0)  # reproducible by default: trial k's first draws depend on (seed, k)
    check_configs(spec)
    spec.n_trials = check_trials(path, spec, raw.get("n_trials"))
    return spec


def _mapping(path, value, name: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, f"'{name}' must be a mapping, got {value!r}")
    return value


def _positive(path, value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _fail(path, f"'{name}' must be a whole number >= 1, got {value!r}")
    return value


def find_recipe(path, name) -> Path:
    """`mnist_mlp` is recipes/mnist_mlp.py (under the working directory, else this checkout); a path is a path."""
    if not isinstance(name, str) or not name:
        raise _fail(path, f"'recipe' must name a recipe (mnist_mlp) or a script path, got {name!r}")
    candidates = [Path(name)] if name.endswith(".py") else [Path("recipes") / f"{name}.py",
                                                            CHECKOUT / "recipes" / f"{name}.py"]
    for c in candidates:
        if c.is_file():
            return c
    raise _fail(path, f"recipe '{name}' not found (looked for {', '.join(map(str, candidates))})")


def load_task(path, recipe: Path) -> Task:
    """The recipe's `task`, from its module loaded by path (recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"sweep_recipe_{recipe.stem}", recipe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    task = getattr(module, "task", None)
    if not isinstance(task, Task):
        raise _fail(path, f"{recipe} defines no `task` (common.entry.Task): it is not a dtrain recipe")
    return task


def check_metric(path, task: Task, metric, direction) -> tuple[str, str]:
    known = task.metrics
    if not isinstance(metric, str) or not metric:
        raise _fail(path, f"'metric' is missing: name one the recipe logs ({', '.join(known) or 'val/<name>'})")
    if known and metric not in known:
        raise _fail(path, f"metric '{metric}' is not one {Path(task.script).name} logs; use one of {', '.join(known)}")
    if direction is None:
        if not known:
            raise _fail(path, f"{Path(task.script).name} declares no metrics: give 'direction: maximize' or 'minimize'")
        return metric, DIRECTIONS[known[metric]]
    if direction not in DIRECTIONS:
        raise _fail(path, f"direction '{direction}': use maximize or minimize")
    return metric, DIRECTIONS[direction]


def named(path, value, what: str, names: tuple[str, ...]) -> dict:
    """`tpe` or {name: tpe, seed: 1, ...}: the name and the keyword arguments of the Optuna class."""
    value = {"name": value} if isinstance(value, str) else value
    if not isinstance(value, dict) or value.get("name") not in names:
        got = value.get("name") if isinstance(value, dict) else value
        raise _fail(path, f"unknown {what} {got!r}; use one of {', '.join(names)}")
    return dict(value)


def make_param(path, task: Task, key, value) -> Param:
    keys = schema(task.Config)
    where = f"params.{key}"
    if key in SWEEP_OWNS:
        raise _fail(path, f"{where}: the sweep sets '{key}' for each trial; search over training keys")
    if key not in keys:
        # The recipe's own message (with its closest key) for an unknown one.
        try:
            parse_cli(task.Config, task.script, [f"{key}=0"])
        except ConfigError as e:
            raise _fail(path, f"{where}: {_from_spec(e)}") from None
    if not isinstance(value, dict):
        raise _fail(path, f"{where} must be a mapping: {{low: .., high: ..[, log: true]}} or {{choices: [..]}}")
    extra = sorted(set(value) - {"low", "high", "log", "step", "choices"})
    if extra:
        raise _fail(path, f"{where}: unknown entry '{extra[0]}'; use low/high (log, step) or choices")
    if "choices" in value:
        choices = value["choices"]
        if not isinstance(choices, list) or not choices or set(value) != {"choices"}:
            raise _fail(path, f"{where}: choices must be a non-empty list, and alone")
        bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if bad:
            raise _fail(path, f"{where}: choice {bad[0]!r} is not a scalar; write it as a string ('{arg(bad[0])}')")
        return Param(key, "categorical", choices=choices)
    tp = keys[key][0]
    kind = {float: "float", int: "int"}.get(typing.get_origin(tp) or tp)
    if kind is None:
        raise _fail(path, f"{where}: {key} is not a number; give choices: [..]")
    low, high, log, step = value.get("low"), value.get("high"), value.get("log", False), value.get("step")
    number = int if kind == "int" else (int, float)
    for name, v in (("low", low), ("high", high)):
        if not isinstance(v, number) or isinstance(v, bool) or not math.isfinite(v):
            raise _fail(path, f"{where}: {name} must be a{'n int' if kind == 'int' else ' number'}, got {v!r}")
    if low > high:
        raise _fail(path, f"{where}: low {low} > high {high}")
    if low == high:
        raise _fail(path, f"{where}: the range [{low}, {high}] is empty; set it in overrides instead")
    if not isinstance(log, bool):
        raise _fail(path, f"{where}: log must be true or false")
    if log and low <= 0:
        raise _fail(path, f"{where}: a log range needs low > 0, got {low}")
    if step is not None and (not isinstance(step, number) or isinstance(step, bool) or step <= 0 or log):
        raise _fail(path, f"{where}: step must be a number > 0, without log")
    return Param(key, kind, low=float(low) if kind == "float" else low, high=float(high) if kind == "float" else high,
                 log=log, step=step)


def _from_spec(e: ConfigError) -> str:
    return str(e).replace("(from the command line)", "(from the spec)")  # the sweep's key=value come from the spec


def check_configs(spec: Spec) -> None:
    """The base config parses, and so does each end of every range and each choice (types, ranges)."""
    base = spec.base_args()
    probes = [[]] + [[f"{p.key}={arg(v)}"] for p in spec.params
                     for v in (p.choices if p.kind == "categorical" else (p.low, p.high))]
    for probe in probes:
        try:
            parse_cli(spec.task.Config, spec.task.script, base + probe)
        except ConfigError as e:
            where = f"params.{probe[0].split('=')[0]}" if probe else "config/overrides"
            raise _fail(spec.path, f"{where}: {_from_spec(e)}") from None


def check_trials(path, spec: Spec, n_trials) -> int:
    if spec.sampler["name"] != "grid":
        return _positive(path, n_trials, "n_trials")
    for p in spec.params:
        if p.kind == "float":
            raise _fail(path, f"params.{p.key}: the grid sampler needs a finite set; give choices: [..]")
        if p.kind == "int" and (p.high - p.low) / (p.step or 1) > GRID_MAX:
            raise _fail(path, f"params.{p.key}: {p.low}..{p.high} is too many grid points; give choices or a step")
    size = math.prod(len(p.grid()) for p in spec.params)
    n_trials = size if n_trials is None else _positive(path, n_trials, "n_trials")
    if n_trials > size:
        raise _fail(path, f"n_trials {n_trials} > the {size} points of the grid; use n_trials: {size} or fewer")
    return n_trials
