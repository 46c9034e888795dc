"""Run a recipe with a fault injected into its train_step (tests only).

    python tests/support/faulty.py <recipe> <fault> [recipe args...]
    torchrun --nproc_per_node=2 tests/support/faulty.py <recipe> <fault> [recipe args...]
    DTRAIN_FAULT="<recipe> <fault>" torchrun ... tests/support/faulty.py [recipe args...]   (sbatch templates)

Faults (N = optimizer step being computed, 1-based):
    nan_from=N        the loss becomes NaN from step N on (a diverged run)
    nan_at=N          the loss is NaN at step N only (an fp16 overflow)
    raise=R@N         rank R raises RuntimeError("injected fault") at step N
    kill=R@N          rank R SIGKILLs itself at step N (after the checkpoints before N were written)
    SIGUSR1=R@N       rank R gets SIGUSR1 (or SIGTERM=R@N: SIGTERM) at step N, as if from the cluster
    kill_in_write=R@N rank R SIGKILLs itself inside the sharded write (torch.distributed.checkpoint) of the
                      step-N checkpoint, after its shard file is written and before the write completes
    hold=rendezvous@R rank R prints "faulty: rank R holding before rendezvous" and waits there (300 s); the other
                      ranks print "faulty: rank r entering rendezvous" and go into it, where they wait for rank R
    hold=data         every rank prints "faulty: rank r holding in build_data" and waits there (300 s): start-up
                      phases a test can kill the launcher in, certain that no worker has passed them
    kill_at_end       the run SIGKILLs itself where it would write its end row (metrics.jsonl's last row), its
                      last checkpoint written: what a machine lost between the two leaves
    pause=N           every rank prints "faulty: rank R paused at step N" and waits there until it gets
                      SIGUSR1, SIGTERM or SIGINT (at most 300 s): a test can signal a run certain not to have finished
kill, the signals and pause fire only in a run that started from scratch, not in its resumed or restarted
continuation: the fault happens at a known step, with no test polling a running process.
"""
import importlib.util
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path


from common.entry import exit_after, run

ROOT = Path(__file__).resolve().parents[2]


def pause_until_signal(rank: int, step: int, limit_s: float = 300) -> None:
    """Wait for SIGUSR1/SIGTERM/SIGINT, passing it on to the handler the run installed (its preemption flag)."""
    got = []
    old = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    for s, handler in old.items():
        signal.signal(s, lambda signum, frame, handler=handler: (got.append(signum), handler(signum, frame)))
    print(f"faulty: rank {rank} paused at step {step}", flush=True)
    deadline = time.monotonic() + limit_s
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    for s, handler in old.items():
        signal.signal(s, handler)


def kill_inside_write(rank: int, step: int) -> None:
    """Wrap DCP's file writer (it runs in the writer thread under ckpt.async_save) to SIGKILL this process
    once its shard of the step-`step` checkpoint is on disk: a kill at a known point mid-write, every time."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    original = FileSystemWriter.write_data

    def write_data(self, plan, planner):
        result = original(self, plan, planner)
        if int(os.environ.get("RANK", 0)) == rank and f".shards-step_{step:08d}-" in str(self.path):
            result.wait()
            print(f"faulty: rank {rank} killed inside the write of step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    FileSystemWriter.write_data = write_data


def hold(phase: str, rank: int | None, task):
    """Make each rank (or rank `rank`) wait in a start-up phase; see the module docstring. Returns the task to run."""
    import torch.distributed

    def held(name, original):
        def wrapper(*args, **kwargs):
            me = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
            if rank is None or me == rank:
                print(f"faulty: rank {me} holding {name}", flush=True)
                time.sleep(300)
            else:
                print(f"faulty: rank {me} entering rendezvous", flush=True)
            return original(*args, **kwargs)
        return wrapper
    if phase == "rendezvous":
        torch.distributed.rendezvous = held("before rendezvous", torch.distributed.rendezvous)
        return task
    if phase == "data":
        return replace(task, build_data=held("in build_data", task.build_data))
    raise ValueError(f"hold={phase}")


def main():
    if "DTRAIN_FAULT" in os.environ:
        recipe, fault = os.environ["DTRAIN_FAULT"].split()
        argv = sys.argv[1:]
    else:
        recipe, fault, *argv = sys.argv[1:]
    spec = importlib.util.spec_from_file_location(recipe, ROOT / "recipes" / f"{recipe}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kind, _, arg = fault.partition("=")
    original = mod.task.train_step
    first_step = []  # the first step this process computes: 1 unless it resumed

    def train_step(cfg, batch, state, rt):
        step = state.step + 1
        first_step[:] = first_step or [step]
        if kind in ("raise", "kill", "SIGUSR1", "SIGTERM"):
            rank, at = map(int, arg.split("@"))
            if rt.rank == rank and step == at:
                if kind == "raise":
                    raise RuntimeError(f"injected fault on rank {rank} at step {step}")
                if first_step[0] == 1:
                    os.kill(os.getpid(), signal.SIGKILL if kind == "kill" else getattr(signal, kind))
        if kind == "pause" and step == int(arg) and first_step[0] == 1:
            pause_until_signal(rt.rank, step)
        if (kind == "nan_from" and step >= int(arg)) or (kind == "nan_at" and step == int(arg)):
            x, y = batch
            batch = (x * float("nan"), y)
        return original(cfg, batch, state, rt)

    task = replace(mod.task, train_step=train_step)
    if kind == "hold":
        phase, _, rank = arg.partition("@")
        task = hold(phase, int(rank) if rank else None, task)
    if kind == "kill_in_write":
        kill_inside_write(*map(int, arg.split("@")))
    if kind == "kill_at_end":
        from common.train.log import Logger
        Logger.end = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    run(task, task.script, argv)


if __name__ == "__main__":
    exit_after(main)
