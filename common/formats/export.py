"""The file --export writes: one model's plain state_dict and its metadata, `.safetensors` (metadata as
JSON under the "dtrain" key of the header) or `.pt` (`{"state_dict", "meta"}`, for torch.load(weights_only=True)).
Written atomically; read back with every field checked (a damaged file is a DamagedFile naming it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from common.config import UserError
from common.formats.writes import write_failure
from common.userfiles import damaged, expect, fields, tensors, torch_load

FORMAT = 1
SUFFIXES = (".safetensors", ".pt", ".pth")
META = {"recipe": str, "model": str, "weights": str, "step": int}  # what every reader of the metadata indexes

def write_export(path: Path, weights: dict, meta: dict) -> None:
    """Atomically (temp file, then rename) write weights + meta as .safetensors or .pt by path's suffix.
    The file gets the mode the umask gives any new file (open(2) with 0o666), whatever the format."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # Own, contiguous storage per tensor: safetensors refuses shared or strided views.
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            if path.suffix == ".safetensors":
                from safetensors.torch import save
                f.write(save(plain, metadata={"dtrain": json.dumps(meta)}))
            else:
                torch.save({"state_dict": plain, "meta": meta}, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except Exception as e:
        reason = write_failure(e, path.parent)
        if reason is None:
            raise
        raise UserError(f"could not write {path}: {reason}; nothing was replaced. Free space or fix permissions "
                        "there, or choose another file with --to FILE") from None
    finally:
        if tmp.exists():  # a failed write's leftover (false, not an error, when the directory is unusable)
            tmp.unlink()


def is_export(path: Path) -> bool:
    return Path(path).is_file() and Path(path).suffix in SUFFIXES and Path(path).name != "state.pt"


def read_export(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of a file written by --export; a damaged file or one that --export did not
    write is a DamagedFile naming it."""
    path, what = Path(path), "the weight file"
    fix = "give a file written by --export: `python recipes/<name>.py --export RUN_DIR --to FILE`"
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get("dtrain")
                weights = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads(expect(text, str, what, path, "its 'dtrain' metadata (written by --export)", fix))
        except Exception as e:  # SafetensorError, OSError, JSONDecodeError: all mean a damaged file
            if isinstance(e, UserError):
                raise
            raise damaged(what, path, e, fix) from None
    else:
        blob = fields(torch_load(path, what, fix), {"state_dict": dict, "meta": dict}, what, path, "the file", fix)
        weights, meta = blob["state_dict"], blob["meta"]
    fields(meta, META, what, path, "its metadata", fix)
    return tensors(weights, what, path, "its weights", fix), meta
