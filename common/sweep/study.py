"""The Optuna side of a sweep: the study in SWEEP/study.db, samplers and pruners from the spec, trials.json.

Samplers are seeded per trial (from the seed and the trial number), so trial k's independent draws are the same whether
the sweep ran through or was killed and re-run. trials.json (the file other tools read instead of the
database) is rewritten atomically: a list of {number, run_dir: "trials/N", params, state, value}.
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from common.config import UserError
from common.sweep.spec import Param, Spec
from common.train import trial as sweep_trial

STUDY = "sweep"  # the one study in a sweep's database


def run_dir(number: int) -> str:
    return f"trials/{number}"


def url(sweep_dir: Path) -> str:
    """The study's storage URL, absolute: the trials' runs open it too (common/train/trial.py)."""
    return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def _build(cls, options: dict, what: str, **fixed):
    """cls(**options, **fixed), an option it does not take being the user's error."""
    allowed = set(inspect.signature(cls).parameters) - set(fixed)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserError(f"sweep spec: {what} has no option '{unknown[0]}'; its options: {', '.join(sorted(allowed))}")
    try:
        return cls(**options, **fixed)
    except (TypeError, ValueError) as e:
        raise UserError(f"sweep spec: {what}: {e}") from None


def sampler(spec: Spec, number: int):
    """The spec's sampler, seeded for trial `number`."""
    options = {k: v for k, v in spec.sampler.items() if k not in ("name", "seed")}
    seed = spec.sampler["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"sweep spec: sampler seed must be a whole number >= 0, got {seed!r}")
    name = spec.sampler["name"]
    if name == "grid":
        # The grid is shuffled with the seed once; trial k takes point k, whatever ran before it.
        return _build(optuna.samplers.GridSampler, options, "sampler grid", seed=seed,
                      search_space={p.key: p.grid() for p in spec.params})
    cls = optuna.samplers.TPESampler if name == "tpe" else optuna.samplers.RandomSampler
    # (seed, number) mixed, not added: sweeps with seeds 0 and 1 must not draw the same points shifted by one.
    trial_seed = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
    return _build(cls, options, f"sampler {name}", seed=trial_seed)


def pruner(spec: Spec):
    """The spec's pruner, built here to check its options; each trial's run builds its own to decide
    (common/train/trial.py)."""
    options, name = {k: v for k, v in spec.pruner.items() if k != "name"}, spec.pruner["name"]
    if name == "none" and options:
        raise UserError(f"sweep spec: pruner none takes no options, got {', '.join(options)}")
    return _build(getattr(optuna.pruners, sweep_trial.PRUNERS[name]), options, f"pruner {name}")


def check(spec: Spec) -> None:
    """Build the sampler and pruner once, so a bad option is refused before anything is written."""
    sampler(spec, 0), pruner(spec)


def open_study(spec: Spec, sweep_dir: Path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
    study = optuna.create_study(storage=sweep_trial.storage(url(sweep_dir)), study_name=STUDY, direction=spec.direction,
                                sampler=sampler(spec, 0), pruner=pruner(spec), load_if_exists=True)
    if study.direction.name.lower() != spec.direction:
        raise UserError(f"{sweep_dir}/study.db {study.direction.name.lower()}s; the spec says {spec.direction}")
    return study


def suggest(trial, p: Param):
    if p.kind == "categorical":
        return trial.suggest_categorical(p.key, p.choices)
    if p.kind == "int":
        return trial.suggest_int(p.key, p.low, p.high, step=p.step or 1, log=p.log)
    return trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)


def ask(study, spec: Spec, number: int):
    """A new trial (it will be number `number`) with every parameter drawn, by the sampler seeded for it."""
    study.sampler = sampler(spec, number)
    trial = study.ask()
    for p in spec.params:
        suggest(trial, p)
    return trial


def write_trials(study, sweep_dir: Path, running: set[int] = frozenset()) -> None:
    """trials.json, atomically. `running`: trials with a process now (the others in Optuna's RUNNING state
    are waiting to be resumed)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name
        if t.state == TrialState.RUNNING and t.number not in running:
            state = "WAITING"
        rows.append({"number": t.number, "run_dir": run_dir(t.number), "params": t.params, "state": state,
                     "value": t.value})
    tmp = sweep_dir / "trials.json.tmp"
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    os.replace(tmp, sweep_dir / "trials.json")
