"""Checkpoint files: atomic, checksummed, keep-N plus best, newest-valid auto-resume.

Layout: out_dir/checkpoints/step_00001200/{state.pt, MANIFEST.json}, best.json.
A checkpoint is written into a hidden temp directory, fsynced, then renamed into
place; MANIFEST.json (sha256 and size of every file) is written last, so a
directory without a matching manifest is never trusted. Rank 0 writes; every
rank learns the outcome, so a failed write stops all ranks together.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
import warnings
from pathlib import Path

import torch

from common import dist
from common.config import UserError

MANIFEST = "MANIFEST.json"
PREFIX = "step_"


class CheckpointError(UserError):
    """A checkpoint could not be written or read; the message says what is intact."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writer_tag() -> str:
    """Who is writing: `PID@HOST`. Temporary names end in it (.tmp-step_N-PID@HOST, .old-..., .shards-...),
    so a later run can tell the leftovers of a dead writer from the files of a live one."""
    return f"{os.getpid()}@{socket.gethostname()}"


_TEMP = re.compile(r"^\.(?P<kind>tmp|old|shards)-(?P<name>step_\d+)(?:-(?P<pid>\d+)(?:@(?P<host>.+))?)?$")


def writer_dead(pid: int | None, host: str | None) -> bool:
    """True only when the writer is certainly gone: a process id on this host (or a name without a host,
    as versions before the host was recorded wrote) that no longer exists. Another host's, an unknown
    or a live writer (including another user's process) is never judged dead."""
    if pid is None or (host is not None and host != socket.gethostname()):
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
    for name, meta in manifest.get("files", {}).items():
        f = ckpt_dir / name
        if not f.is_file():
            return f"missing file {name}"
        if f.stat().st_size != meta["size"]:
            return f"{name} is {f.stat().st_size} bytes, manifest says {meta['size']} (truncated?)"
        if _sha256(f) != meta["sha256"]:
            return f"{name} checksum mismatch (corrupt)"
    return None


def write_checkpoint(final: Path, payload: dict, meta: dict, shards: Path | None = None) -> None:
    """Atomically create `final` (a directory) holding payload as state.pt, plus the files
    under `shards` (engine files every rank wrote, e.g. DeepSpeed's), moved in and checksummed."""
    tmp = final.parent / f".tmp-{final.name}-{writer_tag()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        with open(tmp / "state.pt", "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        if shards is not None:
            for entry in shards.iterdir():
                entry.rename(tmp / entry.name)
        names = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        files = {n: {"size": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in names}
        with open(tmp / MANIFEST, "w") as f:
            json.dump({**meta, "files": files}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        old = final.parent / f".old-{final.name}-{writer_tag()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Checkpointer:
    def __init__(self, directory: Path, keep_last: int = 3, best_mode: str = "max"):
        self.dir = Path(directory)
        self.keep_last = max(1, keep_last)
        self.best_mode = best_mode

    def all(self) -> list[Path]:
        """Checkpoint directories, newest first."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
        return sorted(found, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)

    def path_for(self, step: int) -> Path:
        return self.dir / f"{PREFIX}{step:08d}"

    def best_name(self) -> str | None:
        try:
            return json.loads((self.dir / "best.json").read_text())["name"]
        except (OSError, ValueError, KeyError):
            return None

    def is_better(self, value: float, best: float | None) -> bool:
        """A NaN (or inf) value is never the best; any finite value beats a missing or non-finite best
        (a best recorded as NaN by an older version is replaced by the next finite value)."""
        if value is None or not math.isfinite(value):
            return False
        if best is None or not math.isfinite(best):
            return True
        return value > best if self.best_mode == "max" else value < best

    def save(self, payload: dict, step: int, is_best: bool = False, metric: float | None = None,
             shards=None) -> Path:
        """Rank 0 writes; all ranks return together or raise the same CheckpointError.

        `shards(dir)`, if given, is called on every rank first to write engine files (each
        rank its own) into a staging directory that becomes part of the checkpoint.
        """
        final, error = self.path_for(step), None
        staging = None
        if shards is not None:
            if dist.rank() == 0:
                staging = self.dir / f".shards-{final.name}-{writer_tag()}"  # rank 0's name: see clean_stale
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            staging = Path(dist.broadcast_object(str(staging) if staging else None))  # exists before any rank writes
            shards(staging)
            dist.broadcast_object(None)  # every rank's files are written
        if dist.rank() == 0:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                write_checkpoint(final, payload, {"step": step, "format_version": payload.get("format_version")},
                                 shards=staging)
                if staging is not None:
                    shutil.rmtree(staging, ignore_errors=True)
                if is_best:
                    tmp = self.dir / ".best.json.tmp"
                    tmp.write_text(json.dumps({"name": final.name, "step": step, "metric": metric}))
                    tmp.replace(self.dir / "best.json")
                self._prune()
            except OSError as e:
                previous = next((p.name for p in self.all() if p != final), None)
                error = (f"could not write checkpoint {final}: {e}. The previous checkpoint "
                         f"({previous or 'none'}) is untouched. Free space or fix permissions on {self.dir}, "
                         "then re-run the same command to resume.")
        error = dist.broadcast_object(error)
        if error:
            raise CheckpointError(error)
        return final

    def _prune(self) -> None:
        best = self.best_name()
        for p in self.all()[self.keep_last:]:
            if p.name != best:
                shutil.rmtree(p, ignore_errors=True)
        self.clean_stale()

    def clean_stale(self) -> list[str]:
        """Remove what a writer killed mid-write left (.tmp-*, .old-*, .shards-*), only when that writer
        is certainly dead (writer_dead): never another live run's files. An .old-step_N whose step_N is
        missing (killed between the two renames of a same-step rewrite) is a complete checkpoint: it is
        renamed back into place when it verifies. Returns what it did, one line each."""
        done = []
        if not self.dir.is_dir():
            return done
        for p in sorted(self.dir.iterdir()):
            m = _TEMP.match(p.name)
            if not m or not p.is_dir() or not writer_dead(m["pid"] and int(m["pid"]), m["host"]):
                continue
            final = self.dir / m["name"]
            if m["kind"] == "old" and not final.exists() and verify(p) is None:
                p.rename(final)
                done.append(f"restored {final.name} from {p.name}")
            else:
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}")
        return done

    def latest_valid(self) -> Path | None:
        """Newest checkpoint that passes verification; warns about each newer one that fails.
        Leftovers of dead writers are cleaned first (clean_stale)."""
        try:
            self.clean_stale()
        except OSError as e:
            warnings.warn(f"could not clean temporary checkpoint files in {self.dir}: {e}", stacklevel=2)
        for p in self.all():
            reason = verify(p)
            if reason is None:
                return p
            warnings.warn(f"skipping checkpoint {p}: {reason}; trying the previous one", stacklevel=2)
        return None


def refuse_code(files: list[Path], allowed=()) -> None:
    """Raise CheckpointError naming the first of `files` that does not load with torch.load(weights_only=True)
    (a pickled object other than tensors, plain values and the `allowed` classes): for files a library loads
    itself with pickle's full power (DeepSpeed's engine.load_checkpoint), checked before it touches them.
    Collective: each rank checks a share of the files (mmap: tensor data is not read), all learn the verdict."""
    error = None
    with torch.serialization.safe_globals(list(allowed)):
        for f in files[dist.rank()::dist.world_size()]:
            try:
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                error = (f"checkpoint file {f} could not be loaded safely (it holds something other than tensors "
                         f"and plain values: {_first_line(e)}); refusing to resume from it. Use another checkpoint "
                         "(resume=path/to/step_N) or resume=none")
                break
    errors = [e for e in dist.all_gather_object(error) if e]
    if errors:
        raise CheckpointError(errors[0])


def _first_line(e: Exception) -> str:
    """The line of torch's weights_only refusal that names what was refused."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in lines if "unsupported" in line.lower()), lines[0] if lines else repr(e))


def load_file(ckpt_dir: Path) -> dict:
    """Verify and load a checkpoint directory (or a state.pt inside one) on the CPU."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_file():
        ckpt_dir = ckpt_dir.parent
    reason = verify(ckpt_dir)
    if reason:
        raise CheckpointError(f"checkpoint {ckpt_dir} is not usable: {reason}")
    try:
        # weights_only: a checkpoint holds tensors and plain values; anything else is refused.
        return torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {ckpt_dir} could not be loaded safely: {str(e).splitlines()[0]}") from None
