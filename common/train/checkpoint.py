"""Checkpoint files: atomic, checksummed, keep-N plus best, newest-valid auto-resume.

Layout: out_dir/checkpoints/step_00001200/{state.pt, MANIFEST.json}, best.json.
A checkpoint is written into a hidden temp directory, fsynced, then renamed into
place; MANIFEST.json (sha256 and size of every file) is written last, so a
directory without a matching manifest is never trusted. Rank 0 writes; every
rank learns the outcome, so a failed write stops all ranks together.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import socket
import threading
import warnings
from pathlib import Path

import torch

from common import dist
from common.config import UserError
from common.userfiles import expect, fields, first_line as _first_line, torch_load

MANIFEST = "MANIFEST.json"
PREFIX = "step_"
STATE = {"recipe": str, "config": dict, "step": int, "models": dict}  # what every reader of a state.pt indexes


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
            if _sha256(f) != meta["sha256"]:
                return f"{name} checksum mismatch (corrupt)"
        except OSError as e:
            return f"cannot read {name} ({e.strerror or e})"
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
    except BaseException as e:
        if _torch_write_error(e):  # ask the file system now, while the partial file still holds its space
            e.file_system_state = file_system_state(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Checkpointer:
    def __init__(self, directory: Path, keep_last: int = 3, best_mode: str = "max", run_id: str | None = None):
        self.dir = Path(directory)
        self.keep_last = max(1, keep_last)
        self.best_mode = best_mode
        # Written into each MANIFEST.json; pruning deletes only checkpoints with this id (common/train/rundir.py).
        self.run_id = run_id
        self._latest: list[Path | None] = []  # latest_valid's answer, until the next save
        self._pending: threading.Thread | None = None  # a checkpoint write in flight (_finish_later)

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
        rank its own) into a staging directory that becomes part of the checkpoint. If it
        returns a callable, the engine's write is still in flight: see _finish_later.
        """
        final = self.path_for(step)
        self.wait()  # one write at a time: the previous one becomes a checkpoint (or an error) first
        staging = None
        if shards is not None:
            if dist.rank() == 0:
                staging = self.dir / f".shards-{final.name}-{writer_tag()}"  # rank 0's name: see clean_stale
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            staging = Path(dist.broadcast_object(str(staging) if staging else None))  # exists before any rank writes
            try:
                # Each rank writes its own files, so any rank's disk may be the one that fills: all ranks
                # learn every rank's outcome (this is also the point where every rank's files are written,
                # or, in flight, staged in memory).
                with writes_agreed(f"write checkpoint {final}", self.dir, self.dir, every_rank=True):
                    in_flight = shards(staging)
            except CheckpointError:
                if dist.rank() == 0:
                    shutil.rmtree(staging, ignore_errors=True)
                raise
            if in_flight is not None:
                return self._finish_later(in_flight, final, payload, step, is_best, metric, staging)
        with writes_agreed(f"write checkpoint {final}", self.dir, self.dir):
            if dist.rank() == 0:
                self._write(final, payload, step, is_best, metric, staging)
        return final

    def _write(self, final: Path, payload: dict, step: int, is_best: bool, metric, staging: Path | None) -> None:
        """Rank 0: the checkpoint directory, best.json and pruning."""
        # Not parents=True: a run directory removed under a running run (its lock and logs gone) is a
        # write failure, not something to recreate around the checkpoints alone.
        self.dir.mkdir(exist_ok=True)
        self._latest = []
        write_checkpoint(final, payload, {"step": step, "format_version": payload.get("format_version"),
                                          "run_id": self.run_id}, shards=staging)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if is_best:
            tmp = self.dir / ".best.json.tmp"
            tmp.write_text(json.dumps({"name": final.name, "step": step, "metric": metric}))
            tmp.replace(self.dir / "best.json")
        self._prune()

    def _finish_later(self, in_flight, final: Path, payload: dict, step: int, is_best: bool, metric,
                      staging: Path) -> Path:
        """An engine write in flight (engine=fsdp, ckpt.async_save): training goes on while every rank
        writes its shard. `in_flight()` blocks until this rank's write is complete; on rank 0 that
        includes the metadata the coordinator writes after every rank reported, so rank 0 alone can
        then finish the checkpoint, in a thread. Until then it is a staging directory, which resume
        never trusts (a kill mid-write leaves no checkpoint). The payload is copied now: training
        changes the tensors it references. The next save() or wait() collects the outcome."""
        payload = torch.utils._pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, payload)
        outcome: dict = {}

        def finish():
            try:
                in_flight()
                if dist.rank() == 0:
                    self._write(final, payload, step, is_best, metric, staging)
            except BaseException as e:  # noqa: BLE001 - an Exception or DCP's failure; wait() tells every rank
                outcome["error"] = e

        self._pending = threading.Thread(target=finish, name=f"checkpoint-{final.name}", daemon=True)
        self._pending.outcome, self._pending.final, self._pending.staging = outcome, final, staging
        self._pending.start()
        return final

    def wait(self) -> None:
        """Collective: the checkpoint write in flight, if any, is finished (or failed) on every rank."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending.join()
        try:
            with writes_agreed(f"write checkpoint {pending.final}", self.dir, self.dir, every_rank=True):
                if "error" in pending.outcome:
                    raise pending.outcome["error"]
        except CheckpointError:
            if dist.rank() == 0:
                shutil.rmtree(pending.staging, ignore_errors=True)
            raise

    def _prune(self) -> None:
        """Keep this run's newest keep_last (plus the best); never touch another run's checkpoints,
        nor one without a run id (written before ids, or by someone else)."""
        best = self.best_name()
        ours = [p for p in self.all() if read_run_id(p) == self.run_id]
        for p in ours[self.keep_last:]:
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
        Leftovers of dead writers are cleaned first (clean_stale). Remembered until the next save: the
        run directory's check and the resume both ask, and each answer hashes every file."""
        if self._latest:
            return self._latest[0]
        try:
            self.clean_stale()
        except OSError as e:
            warnings.warn(f"could not clean temporary checkpoint files in {self.dir}: {e}", stacklevel=2)
        self._latest = [None]
        for p in self.all():
            reason = verify(p)
            if reason is None:
                self._latest = [p]
                return p
            warnings.warn(f"skipping checkpoint {p}: {reason}; trying the previous one", stacklevel=2)
        return None


def read_run_id(ckpt_dir: Path) -> str | None:
    """The id of the run that wrote a checkpoint (its MANIFEST.json), None when it has none."""
    try:
        return json.loads((Path(ckpt_dir) / MANIFEST).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def newest_intact(directory: Path) -> str:
    """The newest checkpoint in `directory` that verifies, as a path, or a sentence saying there is none."""
    for p in Checkpointer(directory).all():
        if verify(p) is None:
            return str(p)
    return "none (no checkpoint was written yet)"


@contextlib.contextmanager
def writes_agreed(what: str, where: Path, checkpoints: Path, every_rank: bool = False):
    """Collective: run the block (the writes, normally rank 0's), then every rank learns whether a write
    failed and raises the same CheckpointError, naming the fault and the newest intact checkpoint in
    `checkpoints`. A failure that is no write failure (write_failure) propagates unchanged.

    every_rank: each rank writes its own files in the block, so every rank's outcome counts (not only
    rank 0's). A rank whose block failed in another way re-raises that; the others then stop too,
    instead of waiting for it in the next collective."""
    reason, bug, caught = None, None, None
    try:
        yield
    except BaseException as e:
        if not isinstance(e, Exception) and not _dcp_failure(e):
            raise  # KeyboardInterrupt, SystemExit
        caught = e
        if not every_rank:
            reason = write_failure(e, where)
            if reason is None:
                raise
        else:
            # Each rank judges its own failure on its own file system; a DCP failure gathered from another
            # rank is left to that rank to tell.
            mine = _own_failure(e)
            reason = write_failure(mine, where) if mine is not None else None
            bug = mine if mine is not None and reason is None else None
    if every_rank:
        outcomes = dist.all_gather_object((reason, bug and f"{type(bug).__name__}: {_first_line(bug)}"))
        if bug is not None:
            raise caught
        failed = [(r, why, other) for r, (why, other) in enumerate(outcomes) if why or other]
        if caught is not None and not failed:
            raise caught
        if failed:
            r, why, other = failed[0]
            if other:
                raise RuntimeError(f"rank {r} failed while it wrote its part of a checkpoint ({what}): {other}")
            reason = why if dist.world_size() == 1 else f"on rank {r}: {why}"
    error = failed_write(what, reason, where, checkpoints) if reason else None
    error = dist.broadcast_object(error)  # rank 0's words on every rank
    if error:
        raise CheckpointError(error)


def failed_write(what: str, reason: str, where: Path, checkpoints: Path) -> str:
    return (f"could not {what}: {reason}. The newest intact checkpoint is {newest_intact(checkpoints)}. "
            f"Free space or fix permissions on {where}, then re-run the same command to resume from it.")


def write_failure(e: BaseException, where: Path) -> str | None:
    """What a failed write ran into, or None when `e` is no write failure (a bug: let it propagate).

    An OSError says it (ENOSPC, EROFS, EDQUOT, EACCES). torch.save does not: a failed write inside its
    zip writer comes back as RuntimeError("[enforce fail at inline_container.cc:...] unexpected pos ...")
    or "PytorchStreamWriter failed writing file ...", the errno lost; the file system is asked instead.
    (A DCP failure holds every rank's: writes_agreed(every_rank=True) passes each rank its own, _own_failure.)"""
    if isinstance(e, OSError):
        return str(e)
    if not _torch_write_error(e):
        return None
    state = getattr(e, "file_system_state", None) or file_system_state(where)
    return f"{state} (torch.save: {str(e).splitlines()[0][:200]})"


def _torch_write_error(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text)


def _own_failure(e: BaseException) -> BaseException | None:
    """This rank's exception: `e`, or inside a DCP failure (every rank's, gathered) this rank's part of it,
    None when only other ranks failed."""
    if not _dcp_failure(e):
        return e
    pair = e.failures.get(dist.rank())
    return pair[0] if pair else None


def _dcp_failure(e: BaseException) -> bool:
    """torch.distributed.checkpoint's CheckpointException (a BaseException holding each rank's failure),
    known by name: importing that package costs seconds at every start."""
    return type(e).__name__ == "CheckpointException" and isinstance(getattr(e, "failures", None), dict)


def file_system_state(where: Path) -> str:
    """Why writes under `where` fail: read-only or full (statvfs), else what a small probe write there
    runs into (a quota: EDQUOT, while statvfs shows room), else neither."""
    where = Path(where)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        st = os.statvfs(where)
    except OSError as e:
        return f"the file system of {where} cannot be examined ({e})"
    if st.f_flag & os.ST_RDONLY:
        return f"read-only file system ({where})"
    free = st.f_bavail * st.f_frsize
    if free < 16 << 20:
        return f"no space left on device ({free / 2**20:.1f} MiB free on the file system of {where})"
    probe = _probe_write(where)
    if probe is not None:
        return f"{probe} on {where} ({free / 2**30:.1f} GiB free on the file system itself)"
    return f"write failed on {where} ({free / 2**30:.1f} GiB free: a quota or a failing device?)"


def _probe_write(where: Path) -> str | None:
    """Write and remove 1 MiB in `where`: the error's text (e.g. "disk quota exceeded"), None if it worked."""
    probe = where / f".write-probe-{socket.gethostname()}-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(1 << 20))
            f.flush()
            os.fsync(f.fileno())
        return None
    except OSError as e:
        return (e.strerror or str(e)).lower()
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


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
