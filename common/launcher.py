"""Which launcher started this process, and the watchdog that ends a worker whose launcher is gone.

A launcher's worker is its child. When the launcher dies (SIGKILL, the OOM killer) the worker is
re-parented and nothing else ends it: in start-up it sleeps in the store connect of a rendezvous
that never completes (dist_timeout_s), later it would train on alone. The launcher is the worker's
parent when it is first watched (torchrun's agent, accelerate's own process or its mpirun,
deepspeed's per-node `deepspeed.launcher.launch`, srun's slurmstepd), plus that parent's parent
where it is the front end of the same launch (`deepspeed`, `accelerate launch`). Plain `python` is
not watched: its shell may exit normally (nohup, a closed terminal).

`watch()` runs at the first import of `common` and starts a daemon thread; it works in every phase,
including while the main thread is blocked in a C call. Until the training loop takes over
(`hand_over()`: it stops all ranks at a step boundary with a checkpoint), an orphan writes one line
on stderr and ends at once with EXIT_PREEMPTED, as an orphan stopped by the loop does.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped (preempted, or the launcher is gone); re-run (or requeue) to continue
POLL_S = 0.2  # how often the watchdog looks at its launcher (two reads of /proc, no lock, no GIL contention worth naming)
FRONT_ENDS = {"deepspeed", "accelerate"}  # commands that start a per-node launcher (deepspeed.launcher.launch, mpirun)

_why: str | None = None  # set once the launcher is gone: what is gone
_gone = threading.Event()  # set with _why
_handed_over = False  # the training loop stops an orphan itself, with a checkpoint
_watched: list[tuple[int, str]] | None = None  # (pid, start time) of the launcher's processes, once watched


def launcher_of(env=os.environ) -> str:
    """Which launcher started this process, from the variables each one sets."""
    if "ACCELERATE_MIXED_PRECISION" in env and "ACCELERATE_DYNAMO_BACKEND" in env:
        return "accelerate"  # `accelerate launch` sets both, whatever it runs underneath
    if "CROSS_RANK" in env and "CROSS_SIZE" in env and "LOCAL_SIZE" in env:
        return "deepspeed"  # deepspeed.launcher.launch (the `deepspeed` command)
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    if "RANK" in env and "WORLD_SIZE" in env:
        return "env"  # some other env:// launcher
    if "OMPI_COMM_WORLD_RANK" in env or "PMI_RANK" in env:
        return "mpi"
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "slurm"
    return "none"


def watch() -> None:
    """Start the watchdog once, in a launcher's worker (not in plain `python`, not in a DataLoader
    worker: its trainer is watched, and torch ends the loader workers of a trainer that is gone)."""
    global _watched
    if _watched is not None or launcher_of() == "none" or multiprocessing.parent_process() is not None:
        return
    _watched = _launcher()
    threading.Thread(target=_watch, args=(_watched,), name="dtrain-launcher-watchdog", daemon=True).start()


def orphaned() -> str | None:
    """What of the launcher is gone ("the launcher (pid N) is gone"), or None while it lives."""
    return _why


def hand_over() -> None:
    """From now on the caller (the training loop) stops this worker when orphaned() says so."""
    global _handed_over
    _handed_over = True


def _launcher() -> list[tuple[int, str]]:
    """[(pid, its start time)] of the launcher's processes, the parent first."""
    parent = os.getppid()
    watched = [(parent, _stat(parent)[1])]
    grand, _ = _stat(parent)
    if grand > 1 and _is_front_end(grand):
        watched.append((grand, _stat(grand)[1]))
    return watched


def _is_front_end(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")[:3]
    except OSError:
        return False
    return any(os.path.basename(a) in FRONT_ENDS for a in argv)


def _stat(pid: int) -> tuple[int, str]:
    """(parent pid, start time) of a live process; (0, "") for one that is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0, ""
    return (0, "") if fields[0] in "ZX" else (int(fields[1]), fields[19])


def _watch(watched: list[tuple[int, str]]) -> None:
    why = _store_refused()
    while why is None:
        time.sleep(POLL_S)
        why = _gone_now(watched)
    _orphaned(why)
    if not _handed_over:
        _exit()


def _gone_now(watched: list[tuple[int, str]]) -> str | None:
    """The parent by getppid() (re-parenting is the kernel's word for "gone"); a front end by its start
    time, so a reused pid is not taken for the launcher."""
    if os.getppid() != watched[0][0]:
        return f"the launcher (pid {watched[0][0]}) is gone"
    for pid, started in watched[1:]:
        if _stat(pid)[1] != started:
            return f"the launcher (pid {pid}) is gone"
    return None


def _orphaned(why: str) -> None:
    global _why
    _why = _why or why
    _gone.set()


def exit_if_orphaned(wait_s: float = 1.0) -> None:
    """For an error on the way out: if the launcher is gone (looked at now and for up to wait_s: its
    death closes its store just before the kernel re-parents this worker) the error is its consequence,
    so exit as the orphan this is instead of with a traceback. Returns at once where nothing is watched."""
    if _watched is None:
        return
    deadline = time.monotonic() + wait_s
    while not _gone.is_set() and time.monotonic() < deadline:
        why = _gone_now(_watched)
        if why:
            _orphaned(why)
        else:
            time.sleep(0.02)
    if _gone.is_set():
        _exit()


def _exit():
    os.write(2, f"{_why}, so this worker is an orphan: exiting with code {EXIT_PREEMPTED} outside the training "
                "loop (no checkpoint written here); the same command resumes from the newest one\n".encode())
    os._exit(EXIT_PREEMPTED)


def _store_refused() -> str | None:
    """torchrun's workers rendezvous in a store that their agent served before it started them: a
    refused connection means the agent is gone, even one that died before this watchdog began."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    try:
        socket.create_connection((env["MASTER_ADDR"], int(env["MASTER_PORT"])), timeout=10).close()
    except ConnectionRefusedError:
        return f"the launcher's store at {env['MASTER_ADDR']}:{env['MASTER_PORT']} refuses connections: the launcher is gone"
    except (OSError, ValueError):  # unreachable or slow: no verdict; the parent is still watched
        pass
    return None
