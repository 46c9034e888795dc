"""Where a trial's run goes: a process on this machine (Local) or an sbatch job (Slurm).

start(number, args, env) launches `recipe args` (args end with out_dir=SWEEP/trials/N) with `env` added to
this process's environment (sbatch passes it on: SLURM's default --export=ALL) and its output appended to
SWEEP/logs/N.log, and returns a handle: poll() -> None while it runs, else its exit code; stop() asks it
to checkpoint and exit (SIGTERM: the run exits 75); kill() ends it at once.
A local trial is its own process group and gets SIGTERM when the sweep process dies (Linux), so a
killed sweep leaves no run training on alone; a SLURM job outlives the sweep and is found again.
"""
from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from common.config import UserError

PR_SET_PDEATHSIG = 1
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE")


def _log(sweep_dir: Path, number: int, cmd: list[str]) -> Path:
    """The trial's log, with a line per launch (a resumed trial's log continues)."""
    log = sweep_dir / "logs" / f"{number}.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "a") as f:
        f.write(f"dtrain sweep: trial {number}: {shlex.join(cmd)}\n")
    return log


def _die_with_parent():  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: a killed sweep's trials run to their end
        pass


class LocalTrial:
    POLL_S = 0.2  # a look at the process and its metrics.jsonl: no system call worth naming

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        # The leader only (python, or torchrun, which passes it to its workers): the run's DataLoader
        # workers are ended by the run itself.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


class Local:
    def __init__(self, recipe: Path, nproc_per_node: int):
        self.prefix = [sys.executable, str(recipe)] if nproc_per_node == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
             str(recipe)]

    def start(self, sweep_dir: Path, number: int, args: list[str], env: dict[str, str],
              job: str | None = None) -> LocalTrial:
        cmd = self.prefix + args
        with open(_log(sweep_dir, number, cmd), "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **env}, start_new_session=True, preexec_fn=_die_with_parent)
        return LocalTrial(proc)


def _slurm(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env and {**os.environ, **env})
    except subprocess.TimeoutExpired as e:  # a busy controller: the caller asks again at its next poll
        return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {e.timeout} s")
    except FileNotFoundError:
        raise UserError(f"--slurm: `{cmd[0]}` not found; run the sweep where SLURM's commands are (a login node)") \
            from None


class SlurmTrial:
    POLL_S = 2.0  # each look is an RPC to slurmctld

    def __init__(self, job: str):
        self.job = job

    def poll(self) -> int | None:
        """None while the job is queued, running or requeued (or the controller does not answer), else its
        exit code; a job the controller no longer knows is a failure (1)."""
        out = _slurm("scontrol", "show", "job", self.job)
        if out.returncode != 0:
            return 1 if "Invalid job id" in out.stderr else None
        info = dict(tok.split("=", 1) for tok in out.stdout.split() if "=" in tok)
        if info.get("JobState") not in DONE:
            return None
        rc, sig = (int(x) for x in info.get("ExitCode", "1:0").split(":"))
        return 128 + sig if sig else rc

    def stop(self) -> None:
        # The job's steps, not the batch script: they checkpoint, and the job is not requeued. A job with no
        # step yet (queued, or requeued) is cancelled.
        if _slurm("scancel", "--signal=TERM", self.job).returncode != 0:
            _slurm("scancel", self.job)

    def kill(self) -> None:
        _slurm("scancel", self.job)


class Slurm:
    """Each trial an sbatch job of slurm/<template> (default single_node.sbatch), submitted from the
    working directory (the repository root: the templates source slurm/_lib.sh from there)."""

    def __init__(self, recipe: Path, options: dict, nproc_per_node: int):
        self.recipe = recipe
        self.template = Path("slurm") / options.get("template", "single_node.sbatch")
        self.options = options.get("options", [])
        if not self.template.is_file() or not Path("slurm/_lib.sh").is_file():
            raise UserError(f"--slurm: {self.template} not found here; run the sweep from the repository root "
                            "(the templates need slurm/_lib.sh)")
        if not isinstance(self.options, list) or not all(isinstance(o, str) for o in self.options):
            raise UserError("sweep spec: slurm.options must be a list of sbatch options, e.g. [--time=1:00:00]")
        if not any(o.startswith(("--gpus-per-node", "--gres")) for o in self.options):
            self.options = [f"--gpus-per-node={nproc_per_node}", *self.options]  # the template's processes per node

    def start(self, sweep_dir: Path, number: int, args: list[str], env: dict[str, str],
              job: str | None = None) -> SlurmTrial:
        if job and SlurmTrial(job).poll() is None:
            return SlurmTrial(job)  # submitted by an earlier sweep process, still queued or running
        log = (sweep_dir / "logs" / f"{number}.log").resolve()
        cmd = ["sbatch", "--parsable", f"--output={log}", f"--job-name=sweep-{number}", *self.options,
               str(self.template), str(self.recipe), *args]
        _log(sweep_dir, number, cmd)
        out = _slurm(*cmd, env=env)  # the job's environment: sbatch's default --export=ALL
        if out.returncode != 0:
            raise UserError(f"sbatch refused trial {number}: {out.stderr.strip()}")
        return SlurmTrial(out.stdout.strip().split(";")[0])
