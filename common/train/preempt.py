"""Preemption: SIGUSR1/SIGTERM set a flag; every rank stops at the same step boundary."""
from __future__ import annotations

import signal

import torch

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed after a preemption signal; re-run (or requeue) to continue
PREEMPT_CHECK_STEPS = 10  # multi-process runs share their preemption flags every N steps (one tiny all-reduce)


class Preemption:
    """SIGUSR1/SIGTERM only set a flag; the loop acts on it at a step boundary.

    One process acts at the next step. Several processes must stop at the same step, so
    they combine their flags with an all-reduce every PREEMPT_CHECK_STEPS steps. It is
    started without waiting and read one check later, when it has long finished: no rank
    blocks on it and, on a GPU, the result comes back through a pinned host copy and a CUDA
    event recorded behind it, so the step pipeline is never drained (no host-device sync).
    A signal is acted on within 2 x PREEMPT_CHECK_STEPS steps, on every rank at the same step.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self):
        self.flag = False
        self._pending = None  # (work, tensor, host copy or None, event or None) of the last check
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        self.flag = True

    def agreed(self, rt) -> bool:
        """True on every rank if any rank got the signal before the previous check (a collective:
        call it on all ranks at the same steps)."""
        if rt.world_size == 1:
            return self.flag
        if self._read():
            return True
        t = torch.tensor([float(self.flag)], device=rt.device)
        work = torch.distributed.all_reduce(t, async_op=True)
        host = event = None
        if t.is_cuda:
            work.wait()  # orders the compute stream after the all-reduce; does not block the host
            host = torch.empty(1, pin_memory=True)
            host.copy_(t, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self._pending = (work, t, host, event)
        return False

    def _read(self) -> bool:
        if self._pending is None:
            return False
        work, t, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()  # recorded PREEMPT_CHECK_STEPS steps ago: long complete
            return bool(host[0] > 0)
        work.wait()
        return bool(t[0] > 0)

    def finish(self) -> None:
        """At the normal end of training: collect the last all-reduce, which every rank started."""
        self._read()

    def restore(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
