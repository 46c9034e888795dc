"""Resuming a run: find the checkpoint, check that this config can continue it, load it, and make
the settings that may change mid-run take effect.

A checkpoint fixes a few settings (FIXED, plus what an engine keeps in its own format: `rt.resume_fixed`):
the model (the weights have its shape), the optimizer type (the saved state has its layout), the global
batch, the dataset and the seed (the data position counts global batches of one seeded shuffle). A run
that changes any of them stops before anything is written, with every conflicting key in one message.

Every other setting takes effect: the optimizer's hyperparameters are this run's config (the saved
param groups would silently keep the old LR, weight decay, momentum, betas), and the LR schedule is the
one build_state made for this run's config and length, positioned at the checkpoint's step (the saved
scheduler would keep the old peak LR and length). Unchanged settings give bitwise the same LR as an
uninterrupted run: every schedule here is a closed form of the step. The log lists what changed.
"""
from __future__ import annotations

import fnmatch
import warnings
from pathlib import Path

from common import dist
from common.config import UserError, flatten, to_dict
from common.data.files import class_change
from common.formats.checkpoint import load_file
from common.train.checkpoint import Checkpointer

FIXED = {  # key pattern -> what it decides
    "model.*": "the model (the checkpoint's weights have its shape)",
    "optim.name": "the optimizer type (the saved optimizer state has its layout)",
    "train.batch_size": "the global batch (the data position is counted in global batches; the number of "
                        "processes and train.grad_accum may change)",
    "seed": "the data order (the position in the epoch is counted in this seed's shuffle)",
    "data.name": "the dataset",
    "data.synthetic_*": "the dataset",
    "data.pad_to": "the input shape",
    "data.direction": "which image is the input and which the target",
}
# Not compared: where the run lives and what it continues, and what only decides a fresh run's initial
# weights (the checkpoint replaces them): none of these is how the run trains from here.
NOT_SETTINGS = ("out_dir", "resume", "overwrite", "init_from", "model.pretrained*")


def changes(saved: dict, now: dict) -> list[tuple[str, object, object]]:
    """(key, saved value, this run's value) for every setting both configs have and that differs.
    A key only one side has (a checkpoint from an older or newer schema) is not a change."""
    a, b = flatten(saved), flatten(now)
    return [(k, a[k], b[k]) for k in b if k in a and a[k] != b[k]
            and not any(fnmatch.fnmatchcase(k, p) for p in NOT_SETTINGS)]


def with_settings(sd: dict, now: dict, settings: dict) -> tuple[dict, dict]:
    """The checkpoint's config and this run's, each with the engine's settings (rt.settings) where both
    have them; a setting one side leaves out is "unset" there, so adding or removing one is a change too."""
    saved = (sd.get("engine") or {}).get("settings")
    if not saved or not settings:
        return sd.get("config", {}), now
    keys = saved.keys() | settings.keys()
    return ({**flatten(sd.get("config", {})), **{k: saved.get(k, "unset") for k in keys}},
            {**flatten(now), **{k: settings.get(k, "unset") for k in keys}})


def conflicts(changed, sd: dict, rt) -> list[str]:
    """Lines `key: old -> new (what it decides)` for each change this checkpoint cannot continue with."""
    fixed = {**FIXED, **rt.resume_fixed}
    out = []
    for key, old, new in changed:
        why = next((w for pattern, w in fixed.items() if fnmatch.fnmatchcase(key, pattern)), None)
        if key == "engine" and (sd.get("engine_owned") or rt.owned):
            why = "the checkpoint format (DeepSpeed and FSDP keep weights and optimizer " \
                  "state in their own per-rank format)"
        if why:
            out.append(f"  {key}: {old!r} -> {new!r}  ({why})")
    return out


def find(cfg, rt, ckpt: Checkpointer) -> Path | None:
    """The checkpoint this run continues: resume=PATH, the newest valid one (auto), or none."""
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        found = ckpt.latest_valid() if rt.is_main else None
        path = dist.broadcast_object(str(found) if found else None)
        return Path(path) if path else None
    return Path(cfg.resume)


def resume(cfg, state, rt, ckpt: Checkpointer, recipe: str, classes: list[str] | None = None) -> Path | None:
    """Continue from the checkpoint find() picks; returns it (None: a fresh run). Raises UserError,
    with nothing written, when this config cannot continue it, or the data's class names (`classes`)
    are not the ones the checkpoint's labels number."""
    path = find(cfg, rt, ckpt)
    if path is None:
        return None
    sd = load_file(path)
    changed = changes(*with_settings(sd, to_dict(cfg), rt.settings))
    bad = conflicts(changed, sd, rt)
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
    if changed or moved:
        rt.log("changed since the checkpoint, in effect from now: "
               + "; ".join([f"{k} {old!r} -> {new!r}" for k, old, new in changed] + moved))
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
