"""The checkpoint's file format and its verification, below both the store (common/train/checkpoint.py)
and the engines that write or read their own files.

Layout: out_dir/checkpoints/step_00001200/{state.pt, MANIFEST.json}, best.json.
A checkpoint is written into a hidden temp directory, fsynced, then renamed into
place; MANIFEST.json (sha256 and size of every file) is written last, so a
directory without a matching manifest is never trusted.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from pathlib import Path

import torch

from common import dist
from common.config import UserError
from common.userfiles import expect, fields, torch_load

MANIFEST = "MANIFEST.json"
PREFIX = "step_"
STATE = {"recipe": str, "config": dict, "step": int, "models": dict}  # what every reader of a state.pt indexes


class CheckpointError(UserError):
    """A checkpoint could not be written or read; the message says what is intact."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def writer_tag() -> str:
    """Who is writing: `PID@HOST`. Temporary names end in it (.tmp-step_N-PID@HOST, .old-..., .shards-...),
    so a later run can tell the leftovers of a dead writer from the files of a live one."""
    return f"{os.getpid()}@{socket.gethostname()}"


_TEMP = re.compile(r"^\.(?P<kind>tmp|old|shards)-(?P<name>step_\d+)-(?P<pid>\d+)@(?P<host>.+)$")


def writer_dead(pid: int, host: str) -> bool:
    """True only when the writer is certainly gone: a process id on this host that no longer exists.
    Another host's or a live writer (including another user's process) is never judged dead."""
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return True  # our own leftover: this process writes one checkpoint at a time and is done with it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's
        return False
    return False


def verify(ckpt_dir: Path) -> str | None:
    """None if the checkpoint is complete and its checksums match, else the reason."""
    try:
        manifest = json.loads((ckpt_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return "no MANIFEST.json (the write did not finish)"
    except (OSError, ValueError) as e:
        return f"unreadable MANIFEST.json ({e})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(m, dict) and {"size", "sha256"} <= set(m)
                                              for m in files.values()):
        return "MANIFEST.json does not list the files with their sizes and checksums (damaged)"
    for name, meta in files.items():
        f = ckpt_dir / name
        if not f.is_file():
            return f"missing file {name}"
        if f.stat().st_size != meta["size"]:
            return f"{name} is {f.stat().st_size} bytes, manifest says {meta['size']} (truncated?)"
        try:
            if sha256(f) != meta["sha256"]:
                return f"{name} checksum mismatch (corrupt)"
        except OSError as e:
            return f"cannot read {name} ({e.strerror or e})"
    return None


def checkpoint_dirs(directory: Path) -> list[Path]:
    """The checkpoint directories (step_N) in `directory`, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)


def read_run_id(ckpt_dir: Path) -> str | None:
    """The id of the run that wrote a checkpoint (its MANIFEST.json), None when it has none."""
    try:
        return json.loads((Path(ckpt_dir) / MANIFEST).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def refuse_code(files: list[Path], allowed=()) -> None:
    """Raise CheckpointError naming the first of `files` that does not load with torch.load(weights_only=True)
    (a pickled object other than tensors, plain values and the `allowed` classes): for files a library loads
    itself with pickle's full power (DeepSpeed's engine.load_checkpoint), checked before it touches them.
    Collective: each rank checks a share of the files (mmap: tensor data is not read), all learn the verdict."""
    error, fix = None, ("refusing to load it. Use another checkpoint of the run (checkpoints/step_N: resume=, "
                        "--evaluate and --export take one)")
    with torch.serialization.safe_globals(list(allowed)):
        for f in files[dist.rank()::dist.world_size()]:
            try:  # each of DeepSpeed's files is a dict
                expect(torch_load(f, "checkpoint file", fix, mmap=True), dict, "checkpoint file", f, "the file", fix)
            except UserError as e:
                error = str(e)
                break
    errors = [e for e in dist.all_gather_object(error) if e]
    if errors:
        raise CheckpointError(errors[0])


def load_file(ckpt_dir: Path) -> dict:
    """Verify and load a checkpoint directory (or a state.pt inside one) on the CPU."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_file():
        ckpt_dir = ckpt_dir.parent
    reason = verify(ckpt_dir)
    if reason:
        raise CheckpointError(f"checkpoint {ckpt_dir} is not usable: {reason}")
    fix = "use another checkpoint (resume=path/to/step_N or the run directory)"
    sd = torch_load(ckpt_dir / "state.pt", "checkpoint file", fix, CheckpointError)
    return fields(sd, STATE, "checkpoint file", ckpt_dir / "state.pt", "the file", fix)
