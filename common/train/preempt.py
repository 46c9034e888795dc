"""Preemption, Ctrl-C and a dead launcher: SIGUSR1/SIGTERM/SIGINT set a flag, and so does the launcher
watchdog (common/launcher.py) once training runs; every rank stops
at the same step boundary after writing a checkpoint. Preempted and orphaned runs exit 75, Ctrl-C
exits 130 (a second Ctrl-C exits at once, without the checkpoint)."""
from __future__ import annotations

import os
import signal

import torch

from common import launcher
from common.launcher import EXIT_PREEMPTED  # checkpointed after a preemption signal; re-run (or requeue) to continue

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C: checkpointed after Ctrl-C; re-run to continue
PREEMPT_CHECK_STEPS = 10  # multi-process runs share their preemption flags every N steps (one tiny all-reduce)


class Preemption:
    """SIGUSR1/SIGTERM/SIGINT only set a flag; the loop acts on it at a step boundary.

    Ctrl-C (SIGINT) takes the same path as a preemption signal: checkpoint, then exit, with
    EXIT_INTERRUPTED (130) instead of EXIT_PREEMPTED (75); if any rank got SIGINT every rank exits 130.
    A second Ctrl-C raises KeyboardInterrupt at once (exit 130 with a traceback, no new checkpoint;
    the previous checkpoints are intact: writes are atomic).

    One process acts at the next step. Several processes must stop at the same step, so
    they combine their flags with an all-reduce every PREEMPT_CHECK_STEPS steps. It is
    started without waiting and read one check later, when it has long finished: no rank
    blocks on it and, on a GPU, the result comes back through a pinned host copy and a CUDA
    event recorded behind it, so the step pipeline is never drained (no host-device sync).
    A signal is acted on within 2 x PREEMPT_CHECK_STEPS steps, on every rank at the same step.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.flag = False  # a stop was asked for (any of SIGNALS)
        self.interrupted = False  # ... by Ctrl-C (SIGINT)
        self.code = EXIT_PREEMPTED  # once agreed() is True: the exit code every rank uses
        self._pending = None  # (work, tensor, host copy or None, event or None) of the last check
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        # A worker whose launcher is gone (common/launcher.py) stops here from now on, with a checkpoint,
        # instead of being ended at once by the launcher watchdog.
        launcher.hand_over()
        self.orphaned = False

    @property
    def reason(self) -> str:
        """Why the run stops, once agreed() is True (for the log line)."""
        if self.orphaned:
            return f"{launcher.orphaned() or 'the launcher of another rank is gone'}, so this worker is an orphan"
        return "interrupted (Ctrl-C)" if self.code == EXIT_INTERRUPTED else "preempted"

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            if self.interrupted:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now
            self.interrupted = True
            # os.write: safe in a handler that may interrupt a print on the same stream
            os.write(2, b"\nCtrl-C: stopping after the current step and writing a checkpoint "
                        b"(press Ctrl-C again to exit at once, without it)\n")
        self.flag = True

    def _level(self) -> float:
        """0 nothing, 1 orphaned, 2 preempted, 3 Ctrl-C (flags only: cheap at a step boundary).
        The highest over the ranks wins: a launcher killed by the same preemption signal (SLURM's, sent
        to the whole step) leaves its workers both orphaned and signalled, and "preempted" says why."""
        if self.interrupted:
            return 3.0
        if self.flag:
            return 2.0
        return 1.0 if launcher.orphaned() else 0.0

    def _agree(self, level: float) -> bool:
        if level > 0:
            self.orphaned = level == 1
            self.code = EXIT_INTERRUPTED if level == 3 else EXIT_PREEMPTED
        return level > 0

    def agreed(self, rt) -> bool:
        """True on every rank if any rank got a signal before the previous check (a collective:
        call it on all ranks at the same steps); then `code` is the exit code, the same on every rank."""
        if rt.world_size == 1:
            return self._agree(self._level())
        if self._agree(self._read()):
            return True
        t = torch.tensor([self._level()], device=rt.device)
        work = torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, async_op=True)
        host = event = None
        if t.is_cuda:
            work.wait()  # orders the compute stream after the all-reduce; does not block the host
            host = torch.empty(1, pin_memory=True)
            host.copy_(t, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self._pending = (work, t, host, event)
        return False

    def _read(self) -> float:
        """The highest level (_level) over the ranks at the previous check."""
        if self._pending is None:
            return 0.0
        work, t, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()  # recorded PREEMPT_CHECK_STEPS steps ago: long complete
            return float(host[0])
        work.wait()
        return float(t[0])

    def exit(self, rt, step: int) -> None:
        """Once agreed() and the checkpoint of `step` is written: every rank exits with `code`."""
        rt.log(f"{self.reason}: checkpoint at step {step} written; exiting with code {self.code}; "
               "the same command resumes from it")
        raise SystemExit(self.code)

    def finish(self) -> None:
        """At the normal end of training: collect the last all-reduce, which every rank started."""
        self._read()

    def restore(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
