"""A finished run's weights: which checkpoint a run directory means, and each model's plain state_dict
from it (EMA or raw, under any engine). Read by warm start (init_from) and the after-training commands.

A run directory means its best checkpoint (checkpoints/best.json) when that one verifies, else the
newest valid one; a checkpoint directory or its state.pt means itself. Every caller says which.
"""
from __future__ import annotations

from pathlib import Path

from common.config import UserError
from common.engines import full_weights_reader
from common.formats.checkpoint import verify
from common.train.checkpoint import Checkpointer


def locate(path: Path) -> tuple[Path, str] | None:
    """(checkpoint directory, why this one) for a run directory, its checkpoints/ folder, a checkpoint
    directory or a state.pt; None when there is none. Reads only: nothing is cleaned or renamed."""
    path = Path(path)
    if path.is_file() and path.name == "state.pt":
        path = path.parent
    if (path / "state.pt").exists():  # a checkpoint, intact or not: load_file says what is wrong with it
        return path, "the checkpoint given"
    folder = Checkpointer(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
    best, newer_broken = folder.best_name(), []
    if best and verify(folder.dir / best) is None:
        return folder.dir / best, f"the best checkpoint ({folder.dir / 'best.json'})"
    for p in folder.all():
        reason = verify(p)
        if reason is None:
            why = "the newest valid checkpoint" + (" (best.json names no valid one)" if best else " (no best.json)")
            return p, why + "".join(f"; skipped {n}" for n in newer_broken)
        newer_broken.append(f"{p.name}: {reason}")
    return None


def strip_ema(sd: dict) -> dict:
    """An EMA copy's state_dict (AveragedModel: module.<key> and n_averaged) as the model's own."""
    return {k[len("module."):]: v for k, v in sd.items() if k.startswith("module.")}


def checkpoint_weights(ckpt: Path, sd: dict, weights: str | None) -> tuple[dict[str, dict], str]:
    """({model name: plain state_dict}, "ema" | "raw"): each model's EMA copy where asked for (default:
    when the checkpoint has one), the trained weights for the others, gathered by the engine that
    wrote them (common.engines.full_weights_reader: DeepSpeed's ZeRO partitions included)."""
    emas = sd.get("ema") or {}
    if weights == "ema" and not emas:
        raise UserError(f"--weights ema: checkpoint {ckpt} has no EMA copy (the run had train.ema_decay=0); "
                        "use --weights raw")
    which = weights or ("ema" if emas else "raw")
    engine = sd.get("config", {}).get("engine", "ddp")
    names = set(sd.get("models", {})) | set(sd.get("engine_owned", []))
    # Every model has its EMA copy in state.pt: no need to gather the trained weights (ZeRO partitions).
    out = {} if which == "ema" and names <= set(emas) else full_weights_reader(engine)(ckpt)
    if which == "ema":
        out.update({name: strip_ema(e) for name, e in emas.items()})
    return out, which
