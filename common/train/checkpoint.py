"""The checkpoint store: atomic, checksummed, keep-N plus best, newest-valid auto-resume.

File format and verification: common/formats/checkpoint.py; write-failure agreement:
common/formats/writes.py. Layout: out_dir/checkpoints/step_00001200/{state.pt, MANIFEST.json}, best.json.
A checkpoint is written into a hidden temp directory, fsynced, then renamed into
place; MANIFEST.json (sha256 and size of every file) is written last, so a
directory without a matching manifest is never trusted. Rank 0 writes; every
rank learns the outcome, so a failed write stops all ranks together.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import threading
import warnings
from pathlib import Path

import torch

from common import dist
from common.formats.checkpoint import (MANIFEST, PREFIX, CheckpointError, checkpoint_dirs, read_run_id, sha256, verify,
                                       writer_dead, writer_tag, _TEMP)
from common.formats.writes import file_system_state, writes_agreed, _torch_write_error


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        files = {n: {"size": (tmp / n).stat().st_size, "sha256": sha256(tmp / n)} for n in names}
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
        return checkpoint_dirs(self.dir)

    def path_for(self, step: int) -> Path:
        return self.dir / f"{PREFIX}{step:08d}"

    def best_name(self) -> str | None:
        try:
            return json.loads((self.dir / "best.json").read_text())["name"]
        except (OSError, ValueError, KeyError):
            return None

    def is_better(self, value: float, best: float | None) -> bool:
        """A NaN (or inf) value is never the best, so a recorded best is always finite; any finite value
        beats a missing best."""
        if value is None or not math.isfinite(value):
            return False
        if best is None:
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
            staging = dist.on_main(lambda: self._staging(final))  # exists before any rank writes
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

    def _staging(self, final: Path) -> Path:
        """Rank 0: an empty directory for the engine files of `final`, named for rank 0 (see clean_stale)."""
        staging = self.dir / f".shards-{final.name}-{writer_tag()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

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
            if not m or not p.is_dir() or not writer_dead(int(m["pid"]), m["host"]):
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
