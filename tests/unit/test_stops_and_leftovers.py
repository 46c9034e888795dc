"""NaN best metrics, Ctrl-C and preemption flags, leftovers of dead checkpoint writers, 'step none'."""
import math
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from common.config import UserError
from common.formats.checkpoint import verify, writer_dead
from common.train.checkpoint import Checkpointer, write_checkpoint
from common.train.meter import NonFiniteGuard
from common.train.preempt import EXIT_INTERRUPTED, EXIT_PREEMPTED, Preemption

HOST = socket.gethostname()


# -- a NaN metric is never the best ------------------------------------------------------------
@pytest.mark.parametrize("mode", ["max", "min"])
def test_nan_never_becomes_the_best(tmp_path, mode):
    c = Checkpointer(tmp_path, best_mode=mode)
    assert not c.is_better(math.nan, None)  # the first evaluation is NaN: no best yet
    assert not c.is_better(math.nan, 0.5) and not c.is_better(math.inf if mode == "min" else -math.inf, 0.5)
    assert c.is_better(0.1, None)
    assert c.is_better(0.9, 0.5) == (mode == "max")


# -- Ctrl-C -------------------------------------------------------------------------------------
def test_second_ctrl_c_exits_at_once_and_preemption_keeps_75():
    p = Preemption()
    try:
        class Rt:
            world_size = 1
        assert not p.agreed(Rt)
        p._handle(signal.SIGTERM, None)
        assert p.agreed(Rt) and p.code == EXIT_PREEMPTED
        p._handle(signal.SIGINT, None)  # Ctrl-C wins: the user is at the terminal
        assert p.agreed(Rt) and p.code == EXIT_INTERRUPTED
        with pytest.raises(KeyboardInterrupt):
            p._handle(signal.SIGINT, None)
        assert signal.getsignal(signal.SIGINT) == p._handle
    finally:
        p.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- leftovers of writers killed mid-write --------------------------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _checkpoint(path, step):
    write_checkpoint(path, {"w": torch.zeros(2), "step": step}, {"step": step})


def test_leftovers_of_dead_writers_are_cleaned_and_live_ones_kept(tmp_path):
    c = Checkpointer(tmp_path)
    dead, live = _dead_pid(), os.getppid()
    _checkpoint(tmp_path / "step_00000008", 8)
    stale = [f".old-step_00000008-{dead}@{HOST}", f".tmp-step_00000009-{dead}@{HOST}",
             f".shards-step_00000009-{dead}@{HOST}"]
    kept = [f".tmp-step_00000010-{live}@{HOST}", f".old-step_00000008-{dead}@another-host.example",
            ".tmp-step_00000011", f".old-step_00000007-{dead}"]  # no pid@host: its writer is unknown
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.pt").write_bytes(b"partial")
    done = c.clean_stale()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["step_00000008", *kept])
    assert len(done) == len(stale)
    assert writer_dead(dead, HOST) and not writer_dead(live, HOST)
    assert not writer_dead(dead, "another-host.example")


def test_a_complete_old_checkpoint_of_an_interrupted_rewrite_is_restored(tmp_path):
    # killed between `step_N -> .old-step_N-PID@HOST` and `.tmp -> step_N`: the old one is the checkpoint
    dead = _dead_pid()
    old = tmp_path / f".old-step_00000012-{dead}@{HOST}"
    _checkpoint(old, 12)
    (tmp_path / f".tmp-step_00000012-{dead}@{HOST}").mkdir()
    found = Checkpointer(tmp_path).latest_valid()  # resume=auto cleans first
    assert found == tmp_path / "step_00000012" and verify(found) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000012"]


def test_save_names_its_temporaries_with_pid_and_host_and_prunes_dead_ones(tmp_path, monkeypatch):
    c = Checkpointer(tmp_path)
    dead = _dead_pid()
    (tmp_path / f".old-step_00000001-{dead}@{HOST}").mkdir()
    seen = []
    real = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b, *k, **kw: (seen.append(os.path.basename(a)), real(a, b))[1])
    c.save({"w": torch.zeros(1)}, 2)
    c.save({"w": torch.ones(1)}, 2)  # a same-step rewrite goes through .old-
    assert f".tmp-step_00000002-{os.getpid()}@{HOST}" in seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000002"]


# -- no 'step -1' -----------------------------------------------------------------------------------
def test_non_finite_stop_without_any_checkpoint_says_none():
    class Rt:
        world_size, device = 1, torch.device("cpu")
    g = NonFiniteGuard(1, "cpu")
    g.update(torch.tensor([math.nan]), 1)
    with pytest.raises(UserError) as e:
        g.check(Rt, saved_step=-1)
    assert "newest checkpoint: step none" in str(e.value) and "-1" not in str(e.value)
