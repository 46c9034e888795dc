"""Warm start: `init_from=PATH` loads weights only (no optimizer, step or data position) into a fresh run.

PATH is a run directory, a checkpoint, or a file written by --export. Tensors whose name and shape
match are loaded; a tensor whose shape differs (a classifier head for another class count) is
skipped and keeps this run's fresh initialisation; the report lists what was loaded, skipped,
missing and unexpected. The weights go in before the engine wraps the model (DeepSpeed copies
them into its fp32 partitions at that point). A run that resumes from its own checkpoint ignores
init_from and says so: the checkpoint already holds everything.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from common import dist
from common.config import UserError
from common.engines.base import unwrap
from common.formats.checkpoint import load_file, verify
from common.formats.export import is_export, read_export
from common.models.matching import load_matching
from common.train.checkpoint import Checkpointer
from common.train.weights import checkpoint_weights, locate


def read_init(path: str) -> tuple[dict[str, dict], str]:
    """({model name: state_dict}, description) from an exported file, a checkpoint or a run directory
    (its EMA copy when the run kept one)."""
    p = Path(path)
    if is_export(p):
        weights, meta = read_export(p)
        return {meta["model"]: weights}, f"{p} ({meta['recipe']}, step {meta['step']}, {meta['weights']} weights)"
    found = locate(p) if p.exists() else None
    if found is None:
        raise UserError(f"init_from={path!r} is not a run directory with a valid checkpoint, a checkpoint or an "
                        "exported .safetensors/.pt file; give one of those, or init_from=none")
    ckpt, why = found
    sd = load_file(ckpt)
    weights, which = checkpoint_weights(ckpt, sd, None)
    return weights, f"{ckpt} ({why}, recipe {sd.get('recipe')}, step {sd['step']}, {which} weights)"


def resume_pending(cfg) -> str | None:
    """The checkpoint this run will resume from, if any (rank 0 looks, every rank learns)."""
    if cfg.resume == "none":
        return None
    if cfg.resume != "auto":
        return cfg.resume
    return dist.on_main(lambda: next((str(p) for p in Checkpointer(Path(cfg.out_dir) / "checkpoints").all()
                                      if verify(p) is None), None))


def init_from(cfg, rt, models: dict[str, nn.Module]) -> None:
    """Apply cfg.init_from to the freshly built models (before the engine wraps them)."""
    if cfg.init_from in ("", "none"):
        return
    resuming = resume_pending(cfg)
    if resuming:
        rt.log(f"init_from={cfg.init_from} ignored: this run resumes from {resuming}, which holds its weights, "
               "optimizer and position (a new out_dir, or resume=none overwrite=true, starts from init_from instead)")
        return
    weights, source = read_init(cfg.init_from)
    if not set(weights) & set(models):
        raise UserError(f"init_from={cfg.init_from!r} holds weights for {sorted(weights)}, this recipe's models "
                        f"are {sorted(models)}: point init_from at a run of a recipe with the same models")
    lines = [f"init_from: weights from {source}"]
    for name, model in models.items():
        if name in weights:
            first, *rest = load_matching(unwrap(model), weights[name], f"init_from={cfg.init_from}")
            lines += [f"  {name}: {first}", *(f"  {line}" for line in rest)]
        else:
            lines.append(f"  {name}: no weights in init_from; fresh init")
    rt.log("\n".join(lines))
