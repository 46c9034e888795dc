"""Per-step bookkeeping that stays on the device: running metric sums and the non-finite guard."""
from __future__ import annotations

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
