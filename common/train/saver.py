"""The loop's checkpoint bookkeeping: what a checkpoint holds, whether it is the best, the newest step written.

save() writes the run's state (models, optimizers, counters, the engine's state and shards, the
data's class names and normalisation) through the Checkpointer, never from diverged weights: the
non-finite guard is read and the weights are checked first. A checkpoint is the best when the
evaluation of that same step improved the config's best metric (config.best_metric). Collective.
"""
from __future__ import annotations

import torch

from common.config import UserError, best_metric, to_dict
from common.engines.base import full_tensor, unwrap
from common.train.checkpoint import Checkpointer
from common.train.meter import NonFiniteGuard


class Saver:
    def __init__(self, cfg, state, rt, ckpt: Checkpointer, guard: NonFiniteGuard, loaders, recipe: str):
        self.cfg, self.state, self.rt, self.ckpt, self.guard, self.recipe = cfg, state, rt, ckpt, guard, recipe
        # The labels' names and the inputs' normalisation: another tree is read the same way.
        self.data = {"classes": loaders.classes, "stats": loaders.stats}
        self.last_eval, self.eval_step = {}, -1
        self.saved_step = state.step if state.step else -1  # a resumed run's checkpoint is of its step

    def evaluated(self, metrics: dict[str, float]) -> None:
        """The evaluation of the current step: its checkpoint may be the best."""
        self.last_eval, self.eval_step = metrics, self.state.step

    def check(self) -> None:
        """Every rank stops together if train_step diverged (NonFiniteGuard), naming the newest checkpoint."""
        self.guard.check(self.rt, self.saved_step)

    def save(self) -> None:
        state, newest = self.state, self.saved_step
        self.check()
        if not weights_finite(state):
            raise UserError(f"weights are not finite at step {state.step}; not writing a checkpoint "
                            f"(newest: step {newest if newest >= 0 else 'none'}). Try a lower optim.lr "
                            "or train.clip_grad_norm=1.0")
        split, key = best_metric(self.cfg) or (None, None)
        value = self.last_eval.get(key) if split == "val" and self.eval_step == state.step else None
        is_best = value is not None and self.ckpt.is_better(value, state.best)
        state.best = value if is_best else state.best
        payload = {**state.state_dict(to_dict(self.cfg), self.recipe, self.rt.owned), "engine": self.rt.state_dict(),
                   **self.data}
        self.ckpt.save(payload, state.step, is_best=is_best, metric=value, shards=self.rt.save_shards)
        self.saved_step = state.step

    def finish(self) -> None:
        """Before the run ends (done or preempted): the current step's checkpoint, unless it is written,
        and a write still in flight (ckpt.async_save) made a checkpoint."""
        if self.saved_step != self.state.step:
            self.save()
        self.ckpt.wait()


def weights_finite(state) -> bool:
    flags = [full_tensor(torch.isfinite(p).all()) for m in state.models.values() for p in unwrap(m).parameters() if p.numel()]
    return bool(torch.stack(flags).all().item()) if flags else True
