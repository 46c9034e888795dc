"""The EMA's schedule (common/train/state.py EMA.after_step): every train.ema_every_steps optimizer steps,
and train.ema_warmup, each against the reference it follows (torchvision's reset during the LR warm-up,
timm's ModelEmaV3 warm-up). A real recipe run's EMA: tests/recipes/test_switches.py; resume:
tests/dist/test_resume.py."""
import pytest
import torch
import torch.nn as nn
from timm.utils import ModelEmaV3
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from common.config import BaseConfig, ConfigError, apply
from common.train.checks import warnings
from common.train.state import make_ema


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def _steps(model, steps):
    """Train `model` one SGD step at a time; yields the step count (from 1) after each."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for k in range(1, steps + 1):
        model(torch.randn(16, 4, generator=g)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        yield k


def _assert_same(ours, theirs, exact=True):
    """exact: bitwise, counts included; else the floating tensors within 1e-6 (AveragedModel's own kernels,
    which also average BatchNorm's num_batches_tracked: test_fast_paths.py compares the same way)."""
    for (k, a), b in zip(ours.items(), theirs.values(), strict=True):
        if exact:
            assert torch.equal(a, b), k
        elif a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)


def test_every_n_steps_is_a_lerp_of_the_weights_at_the_update_steps():
    model = nn.Linear(2, 1, bias=False)
    model.weight.data.fill_(0)
    ema = make_ema(model, 0.5, every=3)
    seen = []
    for k in range(1, 11):
        model.weight.data.fill_(k)  # the weights after step k
        ema.after_step(model, k)
        seen.append(ema.module.weight[0, 0].item())
    # Updates at steps 3 (the first: a copy), 6 and 9; in between the EMA holds still.
    assert seen == [0, 0, 3, 3, 3, 4.5, 4.5, 4.5, 6.75, 6.75]
    assert int(ema.n_averaged) == 3


@pytest.mark.parametrize("every,warmup_steps", [(1, 4), (2, 4), (2, 5), (3, 7)])
def test_restart_warmup_is_torchvisions_reset_during_the_lr_warmup(every, warmup_steps):
    """torchvision's train.py: after each EMA update inside the LR warm-up, `n_averaged.fill_(0)`, so the
    next update copies the weights again (the first one after the warm-up included)."""
    model = _net()
    ours = make_ema(model, 0.9, every=every, warmup="restart", lr_warmup_steps=warmup_steps)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    copies = []
    for k in _steps(model, 16):
        ours.after_step(model, k)
        if k % every == 0:
            copies.append(int(ref.n_averaged) == 0)
            ref.update_parameters(model)
            if k <= warmup_steps:
                ref.n_averaged.fill_(0)
        _assert_same(ours.module.state_dict(), ref.module.state_dict(), exact=False)
    assert copies.count(True) == warmup_steps // every + 1 and any(not c for c in copies)  # it does average later
    assert not torch.equal(ours.module[0].weight, model[0].weight)


@pytest.mark.parametrize("decay", [0.5, 0.999])
def test_ramp_warmup_is_timms_model_ema_v3_warmup(decay):
    """timm's train.py --model-ema-warmup: ModelEmaV3(use_warmup=True) updated with step = optimizer updates so
    far; decay min(ema_decay, 1 - step^-2/3), 0 (a copy) at step 1."""
    model = _net()
    ours = make_ema(model, decay, warmup="ramp")
    ref = ModelEmaV3(model, decay=decay, use_warmup=True)
    for k in _steps(model, 12):
        ours.after_step(model, k)
        ref.update(model, step=k)
        _assert_same(ours.module.state_dict(), ref.module.state_dict())
    # With decay 0.5 the ramp ends at step 3 (1 - 3^-2/3 > 0.5); 0.999 ramps through all 12 steps.
    plain = make_ema(_net(), decay)
    model = _net()
    for k in _steps(model, 12):
        plain.after_step(model, k)
    assert not torch.equal(plain.module[0].weight, ours.module[0].weight)


def test_restart_without_an_lr_warmup_is_refused():
    cfg = apply(BaseConfig(), {"train.ema_decay": 0.9, "train.ema_warmup": "restart", "optim.warmup_steps": 0}, "test")
    with pytest.raises(ConfigError, match="train.ema_warmup=restart restarts the EMA through the LR warm-up, and "
                                          "optim.warmup_steps=0 has none: set optim.warmup_steps, or train.ema_warmup=none"):
        warnings(cfg, total=100)
    cfg = apply(BaseConfig(), {"train.ema_decay": 0.9, "train.ema_warmup": "restart", "optim.warmup_steps": 5}, "test")
    assert warnings(cfg, total=100) == []
