import math

import pytest
import torch
import torch.nn as nn

from common.config import OptimConfig
from common.train.optim import build_optimizer, build_scheduler, lr_factor


def lrs(cfg, total):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(cfg, opt, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine_to_min():
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    seq = lrs(cfg, 110)
    assert seq[0] == pytest.approx(1 / 11) and seq[9] == pytest.approx(10 / 11)
    assert seq[10] == pytest.approx(1.0)
    assert seq[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(a >= b for a, b in zip(seq[10:], seq[11:]))
    assert lr_factor(cfg, 110, 110) == pytest.approx(0.1)


def test_step_schedule_milestones():
    cfg = OptimConfig(lr=1.0, schedule="step", step_milestones=[0.5, 0.75], step_gamma=0.1)
    seq = lrs(cfg, 100)
    assert seq[49] == 1.0 and seq[50] == pytest.approx(0.1) and seq[75] == pytest.approx(0.01)


def test_onecycle_peaks_at_lr():
    seq = lrs(OptimConfig(lr=0.4, schedule="onecycle"), 100)
    assert max(seq) == pytest.approx(0.4) and seq[0] < 0.1 and seq[-1] < 1e-3


def test_no_weight_decay_on_norms_and_biases():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    opt = build_optimizer(OptimConfig(weight_decay=5e-4), model)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    opt = build_optimizer(OptimConfig(weight_decay=5e-4, decay_norm_and_bias=True), model)
    assert all(g["weight_decay"] == 5e-4 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == 6
