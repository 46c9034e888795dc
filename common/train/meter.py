"""Per-step bookkeeping that costs no host sync per step: running metric sums and the non-finite
guard (on the device), throughput and step time (host clock), and what is read only on log steps
(peak memory, gradient norms, learning rates)."""
from __future__ import annotations

import resource
import sys
import time

import torch

from common import dist
from common.config import UserError


class Meter:
    """Running sums of train_step outputs, kept on the device until a log step.

    One stack and one add per micro-step, whatever the number of outputs: on a GPU each
    small op is a kernel launch, and a small model's step is only a few dozen of them.
    """

    def __init__(self):
        self.sums: dict[tuple[str, ...], torch.Tensor] = {}  # one running sum per set of output names
        self.counts: dict[tuple[str, ...], int] = {}

    def add(self, out: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Add one train_step's outputs; returns them stacked (for NonFiniteGuard), None if there are none."""
        if not out:
            return None
        keys = tuple(out)
        values = torch.stack([v.detach().float() for v in out.values()])
        if keys in self.sums:
            self.sums[keys].add_(values)
        else:
            self.sums[keys] = values.clone()
        self.counts[keys] = self.counts.get(keys, 0) + 1
        return values

    def reduce(self, rt) -> dict[str, float]:
        """Mean of each output since the last reduce, over steps and ranks (a collective)."""
        if not self.sums:
            return {}
        groups = sorted(self.sums)
        t = torch.cat([self.sums[g] / (self.counts[g] * rt.world_size) for g in groups])
        values = iter(dist.all_reduce_sum(t).tolist())
        self.sums, self.counts = {}, {}
        return {k: next(values) for g in groups for k in g}


class NonFiniteGuard:
    """Stops a run whose train_step outputs are not finite for `limit` micro-steps in a row.

    Per micro-step it writes one flag into a device buffer (two small ops, no host sync);
    the flags are read at log and checkpoint boundaries, or when the buffer is full, and the
    streak is counted on the host. Under fp16 the GradScaler already skips steps with inf/NaN
    gradients; this guard stops a diverged run, naming the step, before a checkpoint is written.
    """

    CAPACITY = 1024  # flags between reads; a full buffer is read early (one sync per 1024 micro-steps)

    def __init__(self, limit: int, device):
        self.limit = max(1, limit)
        self.flags = torch.ones(self.CAPACITY, dtype=torch.bool, device=device)
        self.steps: list[int] = []  # the optimizer step of each pending flag
        self.streak, self.tripped_at = 0, -1

    def update(self, values: torch.Tensor | None, step: int) -> None:
        if values is None:
            return
        torch.all(torch.isfinite(values), out=self.flags[len(self.steps)])
        self.steps.append(step)
        if len(self.steps) == self.CAPACITY:
            self._read()

    def _read(self) -> None:
        for finite, step in zip(self.flags[:len(self.steps)].tolist(), self.steps):
            self.streak = 0 if finite else self.streak + 1
            if self.streak >= self.limit and self.tripped_at < 0:
                self.tripped_at = step
        self.steps.clear()

    def check(self, rt, saved_step: int) -> None:
        """Collective: every rank raises together if any rank tripped."""
        self._read()
        step = self.tripped_at
        if rt.world_size > 1:
            t = torch.tensor([step], dtype=torch.long, device=rt.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            step = int(t.item())
        if step >= 0:
            raise UserError(
                f"train_step returned non-finite values (NaN/inf) for {self.limit} steps in a row, up to step {step}; "
                f"stopping without checkpointing them (newest checkpoint: step {saved_step if saved_step >= 0 else 'none'}). "
                "Try a lower optim.lr, train.clip_grad_norm=1.0, or precision=bf16 instead of fp16 "
                "(train.max_nonfinite_steps sets the count)")


class Throughput:
    """Between log steps: samples per second (all ranks, and per device), mean optimizer-step time,
    and the share of that time spent waiting for the loader.

    A window opens at the first batch request after a log step, so the evaluation and checkpoint
    that follow a log step are not counted as training time. No device sync: on a GPU the clock
    reads at log steps come after Meter.reduce has waited for the device.
    """

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.samples, self.steps, self.waited, self.t0 = 0, 0, 0.0, None

    def wait(self, batches):
        """The next optimizer step's micro-batches from the loader iterator (None at its end)."""
        t = time.perf_counter()
        self.t0 = t if self.t0 is None else self.t0
        item = next(batches, None)
        self.waited += time.perf_counter() - t
        self.steps += item is not None
        return item

    def read(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - (self.t0 or time.perf_counter()), 1e-9)
        rate = self.samples / elapsed
        out = {"samples_per_s": rate, "samples_per_s_per_device": rate / self.world_size,
               "step_time_s": elapsed / max(1, self.steps), "data_wait_pct": 100 * self.waited / elapsed}
        self.samples, self.steps, self.waited, self.t0 = 0, 0, 0.0, None
        return out


GIB = 2 ** 30


def peak_memory(rt) -> dict[str, float]:
    """Peak memory since the process started, in GiB, the highest over ranks (a collective; log steps only).

    CUDA: the caching allocator's peak allocated and reserved bytes on this rank's device.
    Elsewhere: the process's peak resident set size (getrusage; the host has no allocator to ask)."""
    if rt.device.type == "cuda":
        names = ("peak_alloc_gib", "peak_reserved_gib")
        values = [torch.cuda.max_memory_allocated(rt.device), torch.cuda.max_memory_reserved(rt.device)]
    else:
        names = ("peak_rss_gib",)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        values = [rss if sys.platform == "darwin" else rss * 1024]  # bytes on macOS, KiB on Linux
    t = torch.tensor(values, dtype=torch.float64) / GIB
    if rt.world_size > 1:
        t = t.to(rt.device, torch.float32)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return dict(zip(names, t.tolist()))


def learning_rates(optims: dict) -> dict[str, float]:
    """Each optimizer's learning rate (of its first parameter group): `lr`, or `lr/<name>` when a recipe
    has several optimizers (a GAN's `lr/G` and `lr/D`)."""
    rates = {name: float(opt.param_groups[0]["lr"]) for name, opt in optims.items()}
    return {("lr" if len(optims) == 1 else f"lr/{name}"): v for name, v in rates.items()}


def grad_norms(rt, optims: dict) -> dict[str, float]:
    """The global gradient norm (before clipping) of each optimizer's last step, where the engine
    recorded one: `grad_norm`, or `grad_norm_<name>` when a recipe has several optimizers (a GAN's G
    and D). Every rank holds the same value (DDP has averaged the gradients; DeepSpeed reduces its norm)."""
    norms = {name: rt.grad_norm(opt) for name, opt in optims.items()}
    norms = {name: float(v) for name, v in norms.items() if v is not None}
    return {("grad_norm" if len(optims) == 1 else f"grad_norm_{name}"): v for name, v in norms.items()}
