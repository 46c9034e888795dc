"""A launcher SIGKILLed while its workers start up: every worker exits within seconds with the orphan's
code 75 and one line saying so, under torchrun, accelerate launch, deepspeed and an srun-like parent.

The workers are held in a phase by tests/support/faulty.py (hold=...) and print when they are there, so the
launcher dies in that phase every time. This test process adopts the orphans (a child subreaper) to
wait for them and read their exit codes.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.kill_stress import descendants, exit_codes
from support.runs import ROOT, FAULTY, free_port, recipe_command
from support.launchutil import clean_env, command, recipe_args

PR_SET_CHILD_SUBREAPER = 36
EXIT_PREEMPTED = 75


@contextlib.contextmanager
def adopting_orphans():
    """Orphans of this process's descendants become its children, so it can wait for them."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno())
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def wait_for_lines(log: Path, needle: str, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text().count(needle) < count:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.2)


def workers_of(pid: int) -> list[int]:
    """The recipe processes under a launcher: `python [-options] tests/support/faulty.py ...` (not mpirun or
    deepspeed's launcher, which name it further on)."""
    found = []
    for p in descendants(pid):
        try:
            argv = open(f"/proc/{p}/cmdline").read().split("\0")
        except OSError:
            continue
        script = next((a for a in argv[1:] if not a.startswith("-")), "")
        if os.path.basename(argv[0]).startswith("python") and script.endswith("faulty.py"):
            found.append(p)
    return found


def reap(pids: list[int]) -> dict[int, int | str]:
    """The launcher's helpers (mpirun, deepspeed's per-node launcher) adopted by this process: they end
    once their workers have (killed after 30 s)."""
    codes = exit_codes(pids, 30)
    assert "running" not in codes.values(), codes
    return codes


def kill_in_phase(tmp_path, cmd: list[str], env: dict, needle: str) -> tuple[dict, dict, str]:
    """Start cmd (a launcher of 2 workers of tests/support/faulty.py with hold=...), wait until both workers say
    (`needle`) that they are in the phase, SIGKILL the launcher, and return the workers' exit codes, those
    of the launcher's helpers that lived on (exit_codes), and the output."""
    log = tmp_path / "log"
    with adopting_orphans():
        with open(log, "w") as f:
            top = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        below, codes = [], {}
        try:
            wait_for_lines(log, needle, 2, top)
            below = descendants(top.pid)
            workers = workers_of(top.pid)
            assert len(workers) == 2, (workers, log.read_text()[-3000:])
            top.kill()
            top.wait()  # once it is reaped its children are this process's
            codes = exit_codes(workers, 30)
            assert "running" not in codes.values(), (codes, log.read_text()[-4000:])
        finally:
            if top.poll() is None:
                below = below or descendants(top.pid)
                top.kill()
            top.wait()
            helpers = reap([p for p in below if p not in codes])
    return codes, helpers, log.read_text()


def faulty(hold: str, out_dir: Path) -> tuple[list[str], dict]:
    """tests/support/faulty.py with its recipe arguments, and an environment naming the fault (deepspeed puts
    --local_rank ahead of the script's arguments)."""
    args = recipe_args("mnist_mlp", out_dir)
    return [str(FAULTY), *args[1:]], clean_env({"DTRAIN_FAULT": f"mnist_mlp hold={hold}",
                                                                     "DS_ACCELERATOR": "cpu"})


def assert_orphans_exited(codes: dict, text: str) -> None:
    """Both workers exited 75, each saying why, without a traceback."""
    assert list(codes.values()) == [EXIT_PREEMPTED] * 2, (codes, text[-4000:])
    assert text.count("so this worker is an orphan: exiting with code 75") == 2, text[-4000:]
    assert "Traceback" not in text, text[-4000:]


@pytest.mark.parametrize("hold,needle", [("rendezvous@1", "faulty: rank"), ("data", "holding in build_data")])
def test_torchrun_killed_in_start_up_leaves_no_worker(tmp_path, hold, needle):
    """In rendezvous rank 0 is inside it (torchrun's store, waiting for rank 1 in a C call) and rank 1 is
    held before it; in data loading both ranks are past the rendezvous."""
    cmd, env = recipe_command("mnist_mlp", f"out_dir={tmp_path / 'run'}", nproc=2, fault=f"hold={hold}")
    codes, _, text = kill_in_phase(tmp_path, cmd, env, needle)
    assert_orphans_exited(codes, text)


@pytest.mark.parametrize("launcher", ["accelerate", "deepspeed"])
def test_accelerate_and_deepspeed_killed_in_start_up_leave_no_worker(tmp_path, launcher):
    """The command the user ran is killed; its per-node launcher (mpirun, deepspeed.launcher.launch) lives
    on, reaps the workers and reports their exit code (mpirun relays their output, and loses it as it ends)."""
    args, env = faulty("data", tmp_path / "run")
    codes, helpers, text = kill_in_phase(tmp_path, command(launcher, 2) + args, env, "holding in build_data")
    assert set(codes.values()) == {"ended"}, (codes, text[-4000:])
    assert list(helpers.values()) == [EXIT_PREEMPTED], (helpers, text[-4000:])


def test_a_worker_whose_direct_parent_dies_in_rendezvous_exits(tmp_path):
    """srun's tasks are children of slurmstepd: the same watch of the parent at start. Here a plain
    process starts two tasks with srun's variables and is killed while rank 0 serves the rendezvous
    store (waiting for rank 1 in a C call) and rank 1 is held before it."""
    port = free_port()
    tasks = [{"SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2",
              "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_STEP_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(port)} for i in range(2)]
    args, env = faulty("rendezvous@1", tmp_path / "run")
    stepd = ("import subprocess, sys, time, json, os\n"
             "tasks = json.loads(sys.argv[1])\n"
             "procs = [subprocess.Popen(sys.argv[2:], env={**os.environ, **t}) for t in tasks]\n"
             "time.sleep(600)\n")
    cmd = [sys.executable, "-c", stepd, json.dumps(tasks), sys.executable, *args]
    codes, _, text = kill_in_phase(tmp_path, cmd, env, "faulty: rank")
    assert_orphans_exited(codes, text)
