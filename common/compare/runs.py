"""Reading what compare shows: run directories (config.yaml + metrics.jsonl) and sweep directories.

A sweep directory holds trials.json (a list of {number, run_dir, params, state, value}) and each
trial's run directory; it stands for all its trials, whose trial state (PRUNED, RUNNING, ...) wins
over what the run's own rows say. Per run: the best ckpt.best_metric (the earliest step of the best
value, as the best checkpoint), the last evaluation's metrics, steps, wall time (first to last row of
metrics.jsonl), the mean of the train rows' samples_per_s, and the status from the `split: end` row.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from common.config import UserError
from common.fields import flatten
from common.formats.checkpoint import checkpoint_dirs
from common.train.log import read_metrics
from common.train.report import final_metrics
from common.userfiles import torch_load

END_STATUS = {"finished": "finished", "stopped_early": "stopped early", "pruned": "pruned", "preempted": "preempted"}
TRIAL_STATUS = {"PRUNED": "pruned", "RUNNING": "running", "FAIL": "failed", "WAITING": "waiting"}
TIMED = ("train", "val", "end")  # rows a run writes while it trains (--evaluate's `eval` rows come later)
IGNORED = {"out_dir"}  # differs between any two runs and says nothing about them


@dataclass
class Run:
    path: Path
    config: dict  # config.yaml flattened to dotted keys
    rows: list[dict]
    name: str = ""
    recipe: str | None = None
    trial: dict | None = None  # the sweep's trials.json entry, for a trial
    sweep: Path | None = None

    def numbers(self, split: str, key: str) -> list[tuple[int, float, float]]:
        """(step, wall_time, value) of each `split` row holding a finite number under `key`."""
        return [(r["step"], r.get("wall_time", math.nan), float(r[key])) for r in self.rows
                if r.get("split") == split and _finite(r.get(key)) and isinstance(r.get("step"), int)]

    @property
    def best_metric(self) -> tuple[str, str] | None:
        """(metric, mode) from the run's ckpt.best_metric and ckpt.best_mode; None without one."""
        name = self.config.get("ckpt.best_metric")
        if not isinstance(name, str) or name.strip().lower() in ("", "none", "null"):
            return None
        return name, self.config.get("ckpt.best_mode", "max")

    @property
    def best(self) -> tuple[float, int] | None:
        """(value, step) of the best ckpt.best_metric."""
        return self.best_of(*self.best_metric) if self.best_metric else None

    def best_of(self, name: str, mode: str) -> tuple[float, int] | None:
        """(value, step) of the best `name` (val/acc1) by `mode` (max or min): the earliest step holding
        the best value, as the best checkpoint; None when no row has it."""
        split, _, key = name.partition("/")
        seen = self.numbers(split, key)
        if not seen:
            return None
        sign = 1 if mode == "max" else -1
        step, _, value = max(seen, key=lambda s: (sign * s[2], -s[0]))
        return value, step

    @property
    def final(self) -> dict[str, float]:
        """The last evaluation's numbers, as `val/<name>`."""
        return {f"val/{k}": v for k, v in final_metrics(self.rows).items() if _finite(v)}

    @property
    def steps(self) -> int | None:
        steps = [r["step"] for r in self.rows if r.get("split") in TIMED and isinstance(r.get("step"), int)]
        return max(steps) if steps else None

    @property
    def started(self) -> float | None:
        times = [r["wall_time"] for r in self.rows if r.get("split") in TIMED and _finite(r.get("wall_time"))]
        return min(times) if times else None

    @property
    def wall_time_s(self) -> float | None:
        """Seconds from the first to the last row of metrics.jsonl that training wrote."""
        times = [r["wall_time"] for r in self.rows if r.get("split") in TIMED and _finite(r.get("wall_time"))]
        return max(times) - min(times) if times else None

    @property
    def samples_per_s(self) -> float | None:
        rates = [r["samples_per_s"] for r in self.rows if r.get("split") == "train" and _finite(r.get("samples_per_s"))]
        return sum(rates) / len(rates) if rates else None

    @property
    def status(self) -> str:
        """A sweep's trial state where it says more than the run (pruned, running, failed, waiting), else
        the last `end` row's status when no training row follows it, else incomplete (killed, or running)."""
        if self.trial and self.trial.get("state") in TRIAL_STATUS:
            return TRIAL_STATUS[self.trial["state"]]
        status = "incomplete"
        for r in self.rows:
            if r.get("split") == "end":
                status = END_STATUS.get(r.get("status"), str(r.get("status")))
            elif r.get("split") in TIMED:
                status = "incomplete"
        return status


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() and (path / "config.yaml").is_file()


def read_run(path: Path) -> Run:
    """The run in `path`, which is_run() accepted."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path / 'config.yaml'} is not readable YAML ({type(e).__name__}); "
                        "pass run directories written by dtrain") from None
    if not isinstance(config, dict):
        raise UserError(f"{path / 'config.yaml'} holds no config mapping; pass run directories written by dtrain")
    return Run(path, flatten(config), read_metrics(path), recipe=read_recipe(path))


def read_recipe(path: Path) -> str | None:
    """The recipe that wrote the run's newest readable checkpoint (its state.pt: mmap reads no
    tensor data); None without one."""
    for ckpt in checkpoint_dirs(path / "checkpoints"):
        try:
            sd = torch_load(ckpt / "state.pt", "checkpoint file", "", mmap=True)
        except UserError:
            continue
        if isinstance(sd, dict) and isinstance(sd.get("recipe"), str):
            return sd["recipe"]
    return None


def read_sweep(path: Path) -> list[Run]:
    """The trials of the sweep in `path`, by trial number; a trial with no run directory yet (waiting,
    or failed before writing) is a run with its params as config and no rows."""
    try:
        trials = json.loads((path / "trials.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path / 'trials.json'} is not readable JSON ({e}); pass a sweep directory "
                        "written by python -m common.sweep") from None
    if not isinstance(trials, list) or not all(isinstance(t, dict) and isinstance(t.get("number"), int) for t in trials):
        raise UserError(f"{path / 'trials.json'} is not a list of trials with numbers; pass a sweep directory "
                        "written by python -m common.sweep")
    runs = []
    for t in sorted(trials, key=lambda t: t["number"]):
        run_dir = path / str(t.get("run_dir", f"trials/{t['number']}"))
        params = t.get("params") if isinstance(t.get("params"), dict) else {}
        run = read_run(run_dir) if is_run(run_dir) else Run(run_dir, dict(params), [])
        run.trial, run.sweep = t, path
        runs.append(run)
    return runs


def read(args: list[str]) -> list[Run]:
    """The runs the command line names, each with a unique display name. Raises UserError naming an
    argument that is neither a run nor a sweep directory."""
    runs = []
    for arg in args:
        path = Path(arg)
        if (path / "trials.json").is_file():
            runs += read_sweep(path)
        elif is_run(path):
            runs.append(read_run(path))
        else:
            why = "does not exist" if not path.exists() else (
                "is not a run directory (no metrics.jsonl and config.yaml) nor a sweep directory (no trials.json)")
            raise UserError(f"{arg} {why}; pass run directories (a run's out_dir) or sweep directories")
    if not runs:
        raise UserError("no runs to compare: the sweep directories name no trials yet")
    _name(runs, sweeps={r.sweep for r in runs if r.sweep is not None})
    return runs


def _name(runs: list[Run], sweeps: set) -> None:
    """A trial is `trial N` (`<sweep>/N` when more than one sweep or also runs are compared); a run its
    directory's name, or its path from the runs' common parent where two names clash."""
    only_one_sweep = len(sweeps) == 1 and all(r.sweep is not None for r in runs)
    for r in runs:
        if r.trial is not None:
            r.name = f"trial {r.trial['number']}" if only_one_sweep else f"{r.sweep.name}/{r.trial['number']}"
        else:
            r.name = Path(os.path.abspath(r.path)).name  # a link's own name
    if len({r.name for r in runs}) < len(runs):
        parent = os.path.commonpath([os.path.abspath(r.path) for r in runs])
        for r in runs:
            if r.trial is None:
                r.name = os.path.relpath(os.path.abspath(r.path), parent)
    names = [r.name for r in runs]
    for i, r in enumerate(runs):  # one directory given twice
        if names.count(r.name) > 1:
            r.name = f"{r.name} ({i + 1})"


def swept_keys(runs: list[Run]) -> list[str]:
    """The sweeps' searched config keys, in trials.json's order."""
    keys: dict[str, None] = {}
    for r in runs:
        for k in (r.trial or {}).get("params", {}) or {}:
            keys[k] = None
    return list(keys)


def differing_keys(runs: list[Run]) -> list[str]:
    """The swept keys, then the config keys every run has whose value is not the same in all, in config
    order; out_dir aside. A key only some runs have (another recipe's) is left out: the table would
    fill with one recipe's schema. A waiting trial (no config.yaml yet) counts for its params only."""
    swept = swept_keys(runs)
    written = [r for r in runs if r.rows]
    order: dict[str, None] = dict.fromkeys(swept)
    for r in written:
        order.update(dict.fromkeys(r.config))
    differ = []
    for k in order:
        if k in swept:
            differ.append(k)
        elif k not in IGNORED and all(k in r.config for r in written) and len(
                {json.dumps(r.config[k], sort_keys=True, default=str) for r in written}) > 1:
            differ.append(k)
    return differ


def recipes_note(runs: list[Run]) -> str | None:
    """One line when the runs come from different recipes (each's runs named), else None."""
    by: dict[str, list[str]] = {}
    for r in runs:
        if r.recipe is not None:  # known from a checkpoint
            by.setdefault(r.recipe, []).append(r.name)
    if len(by) < 2:
        return None
    return ("note: these runs are of different recipes (" + "; ".join(f"{k}: {', '.join(v)}" for k, v in by.items())
            + "); the table shows the config keys they share")
