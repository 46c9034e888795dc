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


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))


def _steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(16, 4, generator=g)).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("name, cls", [("lamb", "Lamb"), ("lars", "Lars"), ("lion", "Lion")])
def test_timm_optimizers_decay_only_weights_and_resume_bitwise(name, cls, tmp_path):
    """timm's LAMB, LARS and Lion on the same two groups as torch's optimizers (no decay on the LayerNorm
    and the biases), foreach; a state saved and loaded (weights_only) continues exactly as without a stop."""
    cfg = OptimConfig(name=name, lr=0.01, weight_decay=0.1)
    model = _net()
    opt = build_optimizer(cfg, model)
    assert type(opt).__name__ == cls and type(opt).__module__.startswith("timm.optim")
    decayed = [{id(p) for p in g["params"]} for g in opt.param_groups if g["weight_decay"] == 0.1]
    assert decayed == [{id(model[0].weight), id(model[3].weight)}]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 4] and all(g["foreach"] for g in opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    _steps(model, opt, 3, seed=1)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, tmp_path / "ckpt.pt")
    _steps(model, opt, 2, seed=2)  # the run that never stopped

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = _net()
    resumed.load_state_dict(saved["model"])
    opt2 = build_optimizer(cfg, resumed)
    opt2.load_state_dict(saved["optim"])
    _steps(resumed, opt2, 2, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), resumed.state_dict().values()))


def test_lamb_leaves_clipping_to_train_clip_grad_norm():
    """LAMB's own clip of the global gradient norm (a shard's norm under FSDP) is off."""
    opt = build_optimizer(OptimConfig(name="lamb"), _net())
    assert opt.defaults["max_grad_norm"] is None


def cosine(x):
    return 0.5 * (1 + math.cos(math.pi * x))


def test_poly_closed_form():
    cfg = OptimConfig(lr=1.0, schedule="poly", power=2.0, warmup_steps=4, min_lr_ratio=0.1)
    # 4 warmup steps, then 100 steps: at step 4 + k the factor is 0.1 + 0.9 * (1 - k/100)**2.
    for k, want in ((0, 1.0), (25, 0.1 + 0.9 * 0.5625), (50, 0.1 + 0.9 * 0.25), (90, 0.1 + 0.9 * 0.01), (100, 0.1)):
        assert lr_factor(cfg, 4 + k, 104) == pytest.approx(want, rel=1e-12), k
    assert lr_factor(cfg, 3, 104) == pytest.approx(4 / 5) and lr_factor(cfg, 500, 104) == pytest.approx(0.1)
    seq = lrs(cfg, 104)
    assert seq[4 + 25] == pytest.approx(0.1 + 0.9 * 0.5625) and all(a >= b for a, b in zip(seq[4:], seq[5:]))


def test_cosine_restarts_closed_form():
    cfg = OptimConfig(lr=1.0, schedule="cosine_restarts", cycles=3, warmup_steps=10, min_lr_ratio=0.2)
    # 10 warmup steps, then 3 cycles of 30 steps, each a cosine from 1.0 to 0.2 restarted at 1.0.
    for k in (0, 7, 15, 29, 30, 44, 59, 60, 75, 89):
        assert lr_factor(cfg, 10 + k, 100) == pytest.approx(0.2 + 0.8 * cosine((k % 30) / 30), rel=1e-12), k
    assert lr_factor(cfg, 100, 100) == pytest.approx(0.2)
    assert lr_factor(cfg, 10 + 30, 100) == 1.0 and lr_factor(cfg, 10 + 60, 100) == 1.0  # exact restarts
    one = OptimConfig(lr=1.0, schedule="cosine_restarts", cycles=1, warmup_steps=10, min_lr_ratio=0.2)
    plain = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.2)
    assert [lr_factor(one, s, 100) for s in range(101)] == [lr_factor(plain, s, 100) for s in range(101)]


def test_schedules_resume_with_another_length_at_the_checkpoints_step():
    """Each closed form depends on (step, total) only: a schedule built for a longer run and put at step s
    (as resume does) gives the LR an uninterrupted run of that length has at s."""
    from common.train.resume import position
    for cfg in (OptimConfig(lr=1.0, schedule="poly", power=0.9, warmup_steps=3),
                OptimConfig(lr=1.0, schedule="cosine_restarts", cycles=2, warmup_steps=3)):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        sched = build_scheduler(cfg, opt, 80)
        position(sched, 37)
        assert opt.param_groups[0]["lr"] == pytest.approx(lrs(cfg, 80)[37], rel=1e-12)


def test_plateau_scales_the_warmed_up_lr_when_the_metric_stalls_and_only_then():
    cfg = OptimConfig(lr=1.0, schedule="plateau", warmup_steps=4, plateau_factor=0.5, plateau_patience=1,
                      min_lr_ratio=0.2)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(cfg, opt, 100)
    seen = []
    for metric in (0.5, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6):  # "min": 0.5 then 0.4 improve, the rest do not
        opt.step()
        sched.step()
        sched.observe(metric, "min")
        seen.append(opt.param_groups[0]["lr"])
    # Warm-up (steps 1-3 of 4) times the scale; the second evaluation in a row without improvement halves it,
    # at once (the next step's LR), down to min_lr_ratio.
    assert seen == [2 / 5, 3 / 5, 4 / 5, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2]
    assert sched.progress == {"scale": 0.2, "best": 0.4, "bad": 1, "reductions": 3}
    again = build_scheduler(cfg, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr), 100)
    again.load_progress(sched.state_dict())  # what a checkpoint holds
    assert again.progress == sched.progress
    sched.observe(float("nan"), "min")  # never an improvement: the second in a row, at the floor already
    assert sched.progress == {"scale": 0.2, "best": 0.4, "bad": 0, "reductions": 4}
