"""Write-failure agreement: a failed write (no space, read-only, quota) stops every rank with the same
error, naming the fault and the newest intact checkpoint; any other failure propagates unchanged.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from common import dist
from common.config import UserError
from common.formats.checkpoint import CheckpointError, checkpoint_dirs, verify
from common.userfiles import first_line as _first_line


def newest_intact(directory: Path) -> str:
    """The newest checkpoint in `directory` that verifies, as a path, or a sentence saying there is none."""
    for p in checkpoint_dirs(directory):
        if verify(p) is None:
            return str(p)
    return "none (no checkpoint was written yet)"


@contextlib.contextmanager
def writes_agreed(what: str, where: Path, checkpoints: Path, every_rank: bool = False):
    """Collective: run the block (the writes, normally rank 0's), then every rank learns whether a write
    failed and raises the same CheckpointError, naming the fault and the newest intact checkpoint in
    `checkpoints`. A UserError of rank 0's block is raised on every rank too; any other failure that
    is no write failure (write_failure) propagates unchanged.

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
            if reason is None and not isinstance(e, UserError):
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

    def outcome():  # rank 0's, on every rank
        if reason:
            raise CheckpointError(failed_write(what, reason, where, checkpoints))
        if caught is not None:
            raise caught
    dist.on_main(outcome)
    if caught is not None and reason is None:
        raise caught  # another rank's own UserError, after the collective


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
