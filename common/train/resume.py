"""Resuming a run: find the checkpoint, check that this config can continue it, load it, and make
the settings that may change mid-run take effect.

A checkpoint fixes a few settings, each declared on its field (`resume=Fixed(...)`, common/fields.py),
plus what an engine keeps in its own format (`rt.fixed_settings`): the model (the weights have its shape),
the optimizer type (the saved state has its layout), the global batch, the dataset and the seed (the data
position counts global batches of one seeded shuffle). A run that changes any of them stops before
anything is written, with every conflicting key in one message.

Every other setting takes effect: the optimizer's hyperparameters are this run's config (the saved
param groups would silently keep the old LR, weight decay, momentum, betas), and the LR schedule is the
one build_state made for this run's config and length, positioned at the checkpoint's step (the saved
scheduler would keep the old peak LR and length). Unchanged settings give bitwise the same LR as an
uninterrupted run: every schedule here is a closed form of the step, times, for optim.schedule=plateau,
the saved scale its evaluations reached (history: kept, never re-planned for a new length). The log
lists what changed.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from common import dist
from common.config import UserError, flatten, to_dict
from common.fields import NOT_COMPARED, OWN_FORMAT, Fixed, Role, roles
from common.data.files import class_change
from common.formats.checkpoint import load_file
from common.train.checkpoint import Checkpointer
from common.train.optim import Plateau

LENGTH = ("train.max_steps", "train.epochs")


def changes(saved: dict, now: dict, keys: dict[str, Role]) -> list[tuple[str, object, object]]:
    """(key, saved value, this run's value) for every setting both configs have and that differs, less
    the keys declared NOT_COMPARED (`keys`: roles(Config)). A key only one side has is not a change."""
    a, b = flatten(saved), flatten(now)
    return [(k, a[k], b[k]) for k in b if k in a and a[k] != b[k] and keys.get(k, Role()).resume != NOT_COMPARED]


def with_settings(sd: dict, now: dict, settings: dict) -> tuple[dict, dict]:
    """The checkpoint's config and this run's, each with the engine's settings (rt.settings) where both
    have them; a setting one side leaves out is "unset" there, so adding or removing one is a change too."""
    saved = (sd.get("engine") or {}).get("settings")
    if not saved or not settings:
        return sd.get("config", {}), now
    keys = saved.keys() | settings.keys()
    return ({**flatten(sd.get("config", {})), **{k: saved.get(k, "unset") for k in keys}},
            {**flatten(now), **{k: settings.get(k, "unset") for k in keys}})


def fixed_by(key: str, role: Role | None, sd: dict, rt) -> str | None:
    """What `key` decides when this checkpoint fixes it under this run's engine (rt), else None."""
    fixed = role.resume if role else None
    if not isinstance(fixed, Fixed):
        return rt.fixed_settings.get(key)
    if fixed.engine == OWN_FORMAT:
        return fixed.why if sd.get("engine_owned") or rt.owned else None
    return fixed.why if fixed.engine in ("", rt.name) else None


def conflicts(changed, sd: dict, rt, keys: dict[str, Role]) -> list[str]:
    """Lines `key: old -> new (what it decides)` for each change this checkpoint cannot continue with."""
    return [f"  {key}: {old!r} -> {new!r}  ({why})" for key, old, new in changed
            if (why := fixed_by(key, keys.get(key), sd, rt))]


def find(cfg, rt, ckpt: Checkpointer) -> Path | None:
    """The checkpoint this run continues: resume=PATH, the newest valid one (auto), or none."""
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        found = ckpt.latest_valid() if rt.is_main else None
        path = dist.broadcast_object(str(found) if found else None)
        return Path(path) if path else None
    return Path(cfg.resume)


def resume(cfg, state, rt, ckpt: Checkpointer, recipe: str, total: int,
           classes: list[str] | None = None) -> Path | None:
    """Continue from the checkpoint find() picks; returns it (None: a fresh run). Raises UserError,
    with nothing written, when this config cannot continue it, or the data's class names (`classes`)
    are not the ones the checkpoint's labels number. `total`: this run's length in steps; a checkpoint
    at or past it is a complete run, whose changed settings are listed as not applied."""
    path = find(cfg, rt, ckpt)
    if path is None:
        return None
    sd = load_file(path)
    keys = roles(type(cfg))
    changed = changes(*with_settings(sd, to_dict(cfg), rt.settings), keys)
    bad = conflicts(changed, sd, rt, keys)
    moved = class_change(sd.get("classes"), classes)
    bad += [f"  train/ class folders: {moved}"] if moved else []
    if bad:
        raise UserError(f"cannot resume from {path}: this run changes settings the checkpoint fixes:\n"
                        + "\n".join(bad) + "\nNothing was written. To continue the run, drop these overrides "
                        "(or set them back). To train with the new values, start a new run in another out_dir "
                        f"(add init_from={path} to start from its weights).")
    hyper = {k: [{h: v for h, v in g.items() if h != "params"} for g in o.param_groups] for k, o in state.optims.items()}
    for warning in state.load_state_dict(sd, recipe, rt.owned):
        rt.log(f"warning: {warning}")
    rt.load_state_dict(sd.get("engine") or {"scaler": sd["scaler"]})  # "scaler": checkpoints before engines saved their own
    rt.load_shards(path)
    for k, o in state.optims.items():  # this run's hyperparameters, not the saved param groups'
        for group, h in zip(o.param_groups, hyper[k], strict=True):
            group.update(h)
    for sched in state.scheds.values():
        position(sched, state.step)
    rt.log(f"resumed from {path}: step {state.step}, epoch {state.epoch}, batch {state.batch_in_epoch} of the epoch")
    moved = [f"processes {sd['world_size']} -> {rt.world_size}"] if sd.get("world_size", rt.world_size) != rt.world_size else []
    stopped = state.early_stop["stopped_step"] is not None
    if changed or moved:
        done = (f"not applied, the run stopped early at step {state.step}" if stopped else
                f"not applied, the run is complete (step {state.step} of this config's {total})")
        rt.log(f"changed since the checkpoint, {done if state.step >= total or stopped else 'in effect from now'}: "
               + "; ".join([f"{k} {old!r} -> {new!r}" for k, old, new in changed] + moved))
    plateau = next((s for s in state.scheds.values() if isinstance(s, Plateau)), None)
    if plateau and not stopped and state.step < total and any(k in LENGTH for k, _, _ in changed):
        p = plateau.progress
        rt.log(f"optim.schedule=plateau is not re-planned for the new run length: the LR keeps the {p['reductions']} "
               f"reduction(s) made so far (x{p['scale']:.6g} of optim.lr) and falls again only when its metric stalls")
    return path


def position(sched, step: int) -> None:
    """Put a schedule built for this run at optimizer step `step`, as if it had been stepped that often:
    its LR (and OneCycleLR's momentum) for that step, computed from the step like every schedule here.
    A schedule shorter than `step` (the run is already complete) stops at its end."""
    end = getattr(sched, "total_steps", None)
    step = min(step, end) if end is not None else step
    if step <= 0:
        return
    sched.last_epoch = step - 1
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": no optimizer step is skipped here
        warnings.simplefilter("ignore", UserWarning)
        sched.step()
