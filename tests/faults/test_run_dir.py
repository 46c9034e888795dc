"""One run owns an out_dir (common/train/rundir.py): real runs started into one directory, stale
and foreign locks, a fresh run over another run's checkpoints, and workers whose torchrun agent is
SIGKILLed."""
import fcntl
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from support.inprocess import run_inprocess
from support.runs import ROOT, recipe_command, run_ranks, run_recipe
from support.outputs import last_checkpoint_step, metrics

pytestmark = pytest.mark.slow


def snapshot(out):
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.name != "run.lock"}


def wait_for_line(stream, text: str) -> None:
    for line in stream:
        if text in line:
            return
    raise AssertionError(f"the run ended before printing {text!r}")


def test_a_second_run_into_a_used_out_dir_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    cmd, env = recipe_command("mnist_mlp", f"out_dir={out}", fault="pause=5")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        wait_for_line(first.stdout, "paused at step 5")  # it holds the lock and is training
        before = snapshot(out)
        cmd2, env2 = recipe_command("mnist_mlp", f"out_dir={out}", nproc=2)  # torchrun: rank 0 locks
        codes, second = run_ranks(cmd2, env2, timeout=300)  # each rank's own exit code
        assert codes == [2, 2], (codes, second.stderr[-3000:])
        refusals = [line for line in second.stderr.splitlines() if line.startswith(f"error: out_dir {out} is in use")]
        assert len(refusals) == 2, second.stderr[-3000:]  # rank 1 learns it from rank 0
        assert f"in use by another run (pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert "faulty.py mnist_mlp pause=5" in second.stderr  # the holder's command
        assert "use another out_dir" in second.stderr
        assert snapshot(out) == before  # nothing of the first run touched
        first.send_signal(signal.SIGUSR1)  # the paused run goes on: preempted, checkpoint at step 5
        assert first.wait(timeout=300) == 75
    finally:
        first.kill()
    assert last_checkpoint_step(out) == 5
    done = run_inprocess("mnist_mlp", f"out_dir={out}")  # the lock was released: the same command resumes
    assert "resumed from" in done.stdout and not (out / "run.lock").exists()


def test_a_stale_lock_is_taken_over_with_a_log_line(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                              "started": "yesterday", "command": "python old.py"}))
    p = run_inprocess("mnist_mlp", f"out_dir={out}")
    assert f"took over run.lock of a run that is no longer running (pid {dead.pid} on host" in p.stdout, p.stdout[-2000:]


def test_a_lock_held_on_another_host_says_how_to_remove_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / "run.lock", "w") as f:
        f.write(json.dumps({"host": "node042", "pid": 4242, "started": "today", "command": "python train.py"}))
        f.flush()
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, as that host's live run would hold it over NFS
        p = run_recipe("mnist_mlp", f"out_dir={out}", check=False)
    assert p.returncode == 2
    assert "pid 4242 on host node042" in p.stderr and f"remove {out / 'run.lock'} by hand" in p.stderr, p.stderr


def test_a_fresh_run_over_another_runs_checkpoints_is_refused_and_overwrite_moves_it_aside(tmp_path):
    out = tmp_path / "run"
    run_inprocess("mnist_mlp", f"out_dir={out}")
    old_rows = metrics(out)
    before = snapshot(out)
    p = run_recipe("mnist_mlp", f"out_dir={out}", "resume=none", check=False)
    assert p.returncode == 2
    for choice in ("resume=auto", "another out_dir", "overwrite=true"):
        assert choice in p.stderr, p.stderr
    assert snapshot(out) == before
    p = run_inprocess("mnist_mlp", f"out_dir={out}", "resume=none", "overwrite=true", "train.max_steps=8")
    (aside,) = out.glob("previous-*")
    assert metrics(aside) == old_rows and last_checkpoint_step(aside) == 16  # the old run, whole
    assert last_checkpoint_step(out) == 8 and max(r["step"] for r in metrics(out)) == 8


def test_workers_stop_when_their_torchrun_agent_is_killed(tmp_path):
    out = tmp_path / "run"
    cmd, env = recipe_command("mnist_mlp", f"out_dir={out}", "train.max_steps=1000000", "train.ckpt_every_steps=100000",
                              "train.eval_every_steps=100000", "train.log_every_steps=10", nproc=2)
    log = tmp_path / "log"
    with open(log, "w") as f:
        agent = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    workers = []
    try:
        deadline = time.monotonic() + 300
        while "step      10/1000000 " not in log.read_text():  # training: the workers exist and the lock is taken
            assert agent.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        workers = children(agent.pid)
        assert len(workers) == 2, workers
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        deadline = time.monotonic() + 300  # generous: they stop within 2 x PREEMPT_CHECK_STEPS steps
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(alive(w) for w in workers), log.read_text()[-3000:]
    finally:
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)
    text = log.read_text()
    assert "the launcher (pid" in text and "is gone, so this worker is an orphan: checkpoint at step" in text, text[-3000:]
    step = last_checkpoint_step(out)
    assert step and step % 10 == 0  # an agreed stop, written at one step by both ranks
    assert not (out / "run.lock").exists()


def children(pid: int) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(d))
    return found


def alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie is reaped by init, possibly later)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
