"""The run directory: created, locked for the run's life, and told apart from another run's.

Rank 0 takes `out_dir/run.lock`, an exclusive POSIX lock held until the process ends, naming its
holder; a second run into the out_dir stops with exit 2, and a lock left by a dead run is taken
over. A fresh start where another run's checkpoints exist is refused unless `overwrite=true`, which
moves them to out_dir/previous-<time>/. Each run has an id in every checkpoint's MANIFEST.json, so
pruning deletes only this run's checkpoints. What the lock relies on: docs/reliability.md#one-run-per-out_dir.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from common import dist
from common.config import dump_yaml
from common.config import UserError
from common.formats.checkpoint import read_run_id
from common.train.checkpoint import Checkpointer

LOCK = "run.lock"
PREVIOUS = "previous-"  # overwrite=true moves another run's files to out_dir/previous-<time>/


class RunDirError(UserError):
    """The run directory is taken, not writable, or holds another run; the message says what to do."""


class LockHeld(RunDirError):
    """Another live process holds out_dir's lock; `holder` describes it."""

    def __init__(self, message: str, holder: str = ""):  # "": rebuilt on another rank from its message (dist.on_main)
        super().__init__(message)
        self.holder = holder


def prepare(cfg, rt, ckpt: Checkpointer) -> None:
    """Create and lock out_dir, check it holds no other run's checkpoints (ckpt's directory; or move
    them aside with overwrite=true), and set ckpt.run_id to this run's. Collective."""
    ckpt.run_id = dist.on_main(lambda: _prepare_main(cfg, rt, Path(cfg.out_dir), ckpt))


def _prepare_main(cfg, rt, out: Path, ckpt: Checkpointer) -> str:
    """Rank 0: the run id (_take); a file system that refuses is a RunDirError."""
    try:
        return _take(cfg, rt, out, ckpt)
    except OSError as e:
        raise RunDirError(f"out_dir={cfg.out_dir!r} is not writable ({e}); choose another out_dir") from None


def _take(cfg, rt, out: Path, ckpt: Checkpointer) -> str:
    """Lock out_dir, decide fresh vs continued, return the run id."""
    overwrite = cfg.overwrite
    out.mkdir(parents=True, exist_ok=True)
    taken_over = lock(out)
    if taken_over:
        rt.log(f"out_dir {out}: took over {LOCK} of a run that is no longer running ({taken_over})")
    mine = _continues(cfg, out, ckpt)
    if mine is not None:
        return mine
    others = [p.name for p in ckpt.all()]
    if others and not overwrite:
        why = {"none": "resume=none", "auto": "none of them verifies (see the warnings above)"}.get(
            cfg.resume, f"resume={cfg.resume} is not one of them")
        raise RunDirError(
            f"out_dir {out} holds checkpoints of another run ({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}) "
            f"and this run would start beside them ({why}). Choose one: continue that run (resume=auto), use another "
            f"out_dir, or overwrite=true to move that run's files to {out}/{PREVIOUS}<time>/ and start here")
    if others:
        aside = move_aside(out)
        rt.log(f"overwrite=true: the previous run's files were moved to {aside}")
    return _continues(cfg, out, ckpt) or new_run_id()  # after a move: a resume=path's run, or a new one


def _continues(cfg, out: Path, ckpt: Checkpointer) -> str | None:
    """The run id this run continues: that of the checkpoint it will resume from, or a new one when
    that checkpoint has none (written before run ids); None when it starts from scratch."""
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        found = ckpt.latest_valid()
        return None if found is None else read_run_id(found) or new_run_id()
    path = Path(cfg.resume)
    inside = path.resolve().is_relative_to(ckpt.dir.resolve())
    if not inside and ckpt.all():  # a checkpoint of elsewhere, into an out_dir holding another run
        return None
    return read_run_id(path.parent if path.is_file() else path) or new_run_id()


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def move_aside(out: Path) -> Path:
    """Move everything of the previous run (all but the lock and earlier previous-*) into previous-<time>/."""
    aside = out / f"{PREVIOUS}{time.strftime('%Y%m%d-%H%M%S')}"
    n = 0
    while aside.exists():
        n += 1
        aside = aside.with_name(f"{PREVIOUS}{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    aside.mkdir()
    for entry in out.iterdir():
        if entry.name != LOCK and not entry.name.startswith(PREVIOUS):
            entry.rename(aside / entry.name)
    return aside


# ----------------------------------------------------------------------------- the lock

_held: dict[Path, int] = {}  # lock file -> open descriptor, for the life of this process


def holder_text() -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                       "command": " ".join([os.path.basename(sys.executable), *sys.argv])})


def describe(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on host {h['host']}, started {h['started']}: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return "unknown holder"


def lock(out: Path) -> str | None:
    """Take out_dir's lock for the rest of this process's life. Returns the description of a dead
    holder whose lock file was taken over, else None. Raises RunDirError when a live run holds it."""
    path = out / LOCK
    if path in _held:
        return None  # this process already holds it (a second run() in one interpreter)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            previous = _read(fd)
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise LockHeld(_held_message(path, previous), describe(previous)) from None
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                print(f"warning: the file system of {out} does not support locks ({e}): this run does not lock "
                      "it; make sure no other run uses this out_dir", file=sys.stderr, flush=True)
                return None
            raise
        # Locked. The file may have been removed (by a holder releasing it) between open and lock:
        # then the lock is on an orphaned inode, and the path is free to try again.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _read(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_text().encode() + b"\n", 0)
        os.fsync(fd)
    except OSError:
        os.close(fd)  # a full disk: the lock goes with the descriptor, not held by a process that fails
        raise
    _held[path] = fd
    atexit.register(unlock, path)
    return describe(previous) if previous.strip() else None


@contextlib.contextmanager
def held(out: Path):
    """out_dir's lock for the length of a block: a short write into a run directory by a process that
    is not its run (--evaluate's row). Raises LockHeld while a run holds it, OSError where it cannot
    be created (a read-only file system)."""
    path = out / LOCK
    mine = path not in _held
    lock(out)
    try:
        yield
    finally:
        if mine:
            unlock(path)


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace")


def _held_message(path: Path, text: str) -> str:
    msg = (f"out_dir {path.parent} is in use by another run ({describe(text)}). Two runs in one out_dir would "
           "delete each other's checkpoints: wait for that run to finish (or stop it), or use another out_dir")
    try:
        other_host = json.loads(text)["host"] != socket.gethostname()
    except (ValueError, KeyError, TypeError):
        other_host = False
    if other_host:
        msg += (f". It runs on another host: if that job is dead, the file server releases its lock when it notices "
                f"(NFSv4: within about 90 s); if it does not, remove {path} by hand, only when that job is certainly dead")
    return msg


def unlock(path: Path) -> None:
    """Release at the end of the process: remove the file while still holding the lock (so a waiting
    run that opens the old file sees it replaced and retries), then close."""
    fd = _held.pop(path, None)
    if fd is None:
        return
    try:
        path.unlink()
    except OSError:
        pass
    os.close(fd)


# ----------------------------------------------------------------------------- config.yaml

def record_config(out: Path, cfg, step: int) -> None:
    """out/config.yaml is the config the run trains with from now on. When a resume changed it, the
    one it replaces goes to out/config_history/<UTC time>-step_<N>.yaml (in effect until step N), so
    the run directory tells how every step was trained. Collective: rank 0 writes."""
    dist.on_main(lambda: _write_config(out, dump_yaml(cfg), step))


def _write_config(out: Path, text: str, step: int) -> None:
    current = out / "config.yaml"
    try:
        old = current.read_text() if current.is_file() else None
        if old is not None and old != text:
            history = out / "config_history"
            history.mkdir(exist_ok=True)
            (history / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-step_{step:08d}.yaml").write_text(old)
        if old != text:
            tmp = out / ".config.yaml.tmp"
            tmp.write_text(text)
            tmp.replace(current)
    except OSError as e:
        raise RunDirError(f"could not write {current} ({e}); free space or fix permissions on {out}, then re-run") from None
