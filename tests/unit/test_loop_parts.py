"""The loop's per-step bookkeeping: Meter's means, NonFiniteGuard's streaks, the logged learning rates (one process)."""
import math

import pytest
import torch

from common.config import UserError
from common.train.meter import Meter, NonFiniteGuard, learning_rates


class Rt:
    world_size, device = 1, torch.device("cpu")


def test_meter_means_each_output_over_steps_and_resets():
    m = Meter()
    for i in range(4):
        m.add({"loss": torch.tensor(float(i)), "acc1": torch.tensor(10.0 * i)})
    m.add({"d_loss": torch.tensor(3.0)})  # another set of names (e.g. a GAN's D-only step)
    assert m.reduce(Rt) == {"loss": 1.5, "acc1": 15.0, "d_loss": 3.0}
    assert m.reduce(Rt) == {}
    assert m.add({}) is None


def test_learning_rates_are_named_by_optimizer_when_there_are_several():
    def sgd(lr):
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    assert learning_rates({"net": sgd(0.1)}) == {"lr": 0.1}
    assert learning_rates({"G": sgd(2e-4), "D": sgd(1e-4)}) == {"lr/G": 2e-4, "lr/D": 1e-4}


def _run(guard, finite_pattern, start=1):
    for step, ok in enumerate(finite_pattern, start):
        guard.update(torch.tensor([1.0, 2.0 if ok else math.nan]), step)


def test_guard_trips_on_a_streak_and_names_its_last_step():
    g = NonFiniteGuard(3, "cpu")
    _run(g, [True, False, False, True, False, False, False, False])  # streak of 3 ends at step 7
    with pytest.raises(UserError, match="for 3 steps in a row, up to step 7"):
        g.check(Rt, saved_step=4)


def test_guard_ignores_isolated_non_finite_steps():
    g = NonFiniteGuard(2, "cpu")
    _run(g, [False, True, False, True, True])
    g.check(Rt, saved_step=-1)  # no streak of 2: nothing raised


def test_guard_streak_spans_reads_and_a_full_buffer(monkeypatch):
    monkeypatch.setattr(NonFiniteGuard, "CAPACITY", 4)
    g = NonFiniteGuard(5, "cpu")
    _run(g, [True, True, False, False])  # fills the buffer: read early
    assert g.steps == [] and g.streak == 2
    g.check(Rt, saved_step=-1)  # a log step in the middle of the streak
    _run(g, [False, False, False], start=5)
    with pytest.raises(UserError, match="up to step 7"):
        g.check(Rt, saved_step=-1)
