"""Which checkpoint a run directory means, its weights (EMA or raw, under any engine), and the config
the after-training commands (--evaluate, --export) rebuild the model from.

A run directory means its best checkpoint (checkpoints/best.json) when that one verifies, else the
newest valid one; a checkpoint directory or its state.pt means itself. Every command says which.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.config import ConfigError, UserError, from_dict
from common.fields import APPLIED, IGNORED, get, put, roles
from common.formats.checkpoint import load_file
from common.train.weights import locate


def run_dir_of(ckpt: Path) -> Path | None:
    """The run directory a checkpoint belongs to (…/RUN/checkpoints/step_N), else None."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None



@dataclass
class Source:
    ckpt: Path  # the checkpoint directory
    why: str  # how it was chosen
    sd: dict  # its state.pt
    cfg: object  # the config the run was trained with, with the allowed overrides applied
    ignored: list[str]  # training-only keys the command line set, which this command does not read

    @property
    def run_dir(self) -> Path | None:
        return run_dir_of(self.ckpt)

    @property
    def name(self) -> str:
        return self.ckpt.name


def open_source(cli) -> Source:
    """The checkpoint cli.source means, loaded and verified, and its config for this command."""
    flag = f"--{cli.action}"
    found = locate(cli.source)
    if found is None:
        raise UserError(f"{flag} {cli.source}: no valid checkpoint there; give a run directory (an out_dir with "
                        "checkpoints/) or one checkpoint (out_dir/checkpoints/step_N)")
    ckpt, why = found
    sd = load_file(ckpt)
    if sd.get("recipe") != cli.recipe:
        raise UserError(f"{flag} {cli.source}: the checkpoint was written by recipe '{sd.get('recipe')}'; run "
                        f"recipes/{sd.get('recipe')}.py {flag} {cli.source}")
    return Source(ckpt, why, sd, *checkpoint_config(cli, sd["config"], flag))


def build_data(task, src: Source, rt):
    """The task's data for this checkpoint's model. An image folder is labelled by the class names the
    run trained on and normalised with its training images' mean/std (both saved in the checkpoint), so
    another tree gives the same labels and inputs, or exit 2 naming a class the model does not know."""
    saved = {k: src.sd[k] for k in ("classes", "stats") if src.sd.get(k) is not None}
    return task.build_data(src.cfg, rt, **saved)


def checkpoint_config(cli, saved: dict, flag: str):
    """(the trained config with the keys the user set that this command APPLIES, the training-only keys
    the user set, which it IGNORES: roles declared on the fields, common/fields.py); any other key (it
    defines the model or the eval data) set to a value other than the checkpoint's is refused, all of
    them in one message. A --config file made for training still works."""
    cfg = from_dict(type(cli.cfg), saved)
    cfg.engine = "auto"  # the engine it was trained under does not bind how it is read back
    keys = roles(type(cli.cfg))
    conflicts, ignored = [], []
    for key in sorted(cli.user_keys):
        new, old = get(cli.cfg, key), get(cfg, key)
        if keys[key].evaluate == APPLIED:
            put(cfg, key, new)
        elif keys[key].evaluate == IGNORED:
            ignored += [key] if new != old else []
        elif new != old:
            conflicts.append(f"{key}: checkpoint {old!r}, given {new!r}")
    if conflicts:
        free = ", ".join(k for k, role in keys.items() if role.evaluate == APPLIED)
        raise ConfigError(f"{flag} uses the model and data of the checkpoint's config; these settings would "
                          f"change them: {'; '.join(conflicts)}. Drop them (only {free} may differ), or start a "
                          "new run from these weights with init_from=RUN_DIR and your settings")
    return cfg, ignored
