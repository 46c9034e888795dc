"""Optimizers and per-step LR schedules from `cfg.optim`.

sgd, adam and adamw are torch's; lamb, lars and lion are timm's (timm.optim), on the same two parameter
groups. Every schedule but onecycle is lr_factor, a closed form of (step, total): a resume that changes
the run's length or the schedule's keys puts the new schedule at the checkpoint's step. plateau is the
warm-up's closed form times a scale that falls at evaluations (Plateau): that scale is history, saved in
the checkpoint and continued, never re-planned.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

from common.engines.base import unwrap


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Weight decay on weight matrices and conv kernels only: decaying norm scales and
    biases hurts accuracy and buys no regularization (switch back with decay_norm_and_bias).
    Always the same two groups, whatever the values: a resume that changes weight_decay or
    decay_norm_and_bias loads the saved optimizer state into the same parameter layout."""
    decay, no_decay = [], []
    for p in unwrap(model).parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": weight_decay if decay_norm_and_bias else 0.0}]
    return [g for g in groups if g["params"]]


def kernel_options(groups: list[dict], fused: bool = True) -> dict:
    """fused=True when every parameter is a floating CUDA tensor (and the optimizer has a fused kernel,
    `fused`): one kernel for the whole update, and under fp16 GradScaler hands the inf check to that kernel
    instead of reading it on the host (a sync per step with foreach). foreach elsewhere: CPU and MPS,
    where it is the tested path, and timm's optimizers, which have no fused kernel."""
    params = [p for g in groups for p in g["params"]]
    if fused and params and all(p.is_cuda and p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(o, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, o.weight_decay, o.decay_norm_and_bias)
    kernel = kernel_options(groups, fused=o.name in ("sgd", "adam", "adamw"))
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, **kernel)
    if o.name in ("lamb", "lars", "lion"):
        import timm.optim  # seconds to import: only the runs that use its optimizers pay it
    if o.name == "lars":  # the trust ratio only where weight decay is on: not on norms and biases
        return timm.optim.Lars(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, **kernel)
    if o.name == "lamb":  # train.clip_grad_norm is the one clipping: LAMB's own (a local norm under FSDP) is off
        return timm.optim.Lamb(groups, lr=o.lr, betas=tuple(o.betas), max_grad_norm=None, **kernel)
    if o.name == "lion":
        return timm.optim.Lion(groups, lr=o.lr, betas=tuple(o.betas), **kernel)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=o.lr, betas=tuple(o.betas), **kernel)


def lr_factor(o, step: int, total: int) -> float:
    """Multiplier of the peak LR at optimizer step `step` of `total` (every schedule but onecycle)."""
    if step < o.warmup_steps:
        return (step + 1) / (o.warmup_steps + 1)
    if o.schedule in ("constant", "plateau"):  # plateau: Plateau's scale multiplies this
        return 1.0
    span, done = max(1, total - o.warmup_steps), step - o.warmup_steps
    progress = min(1.0, done / span)
    if o.schedule == "cosine_restarts":  # the position in this cycle, in integers: each restart is exact
        progress = (done * o.cycles % span) / span if done < span else 1.0
    if o.schedule in ("cosine", "cosine_restarts"):
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if o.schedule == "poly":
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * (1 - progress) ** o.power
    if o.schedule == "step":
        return o.step_gamma ** sum(progress >= m for m in o.step_milestones)
    raise ValueError(f"unknown schedule {o.schedule}")


def improved(value, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """A finite value better than `best` ("max" or "min" is better) by more than min_delta; any finite value
    beats no best. What the plateau schedule and early stopping (common/train/stopping.py) count."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return best is None or (value > best + min_delta if mode == "max" else value < best - min_delta)


class Plateau(LambdaLR):
    """optim.schedule=plateau: LR = optim.lr x warm-up factor x scale. observe() takes each evaluation's
    metric: after more than optim.plateau_patience evaluations in a row without a strictly better value,
    scale *= optim.plateau_factor, floored at optim.min_lr_ratio (torch's ReduceLROnPlateau with threshold 0
    and no cooldown, as a factor, so the warm-up and a changed optim.lr still apply). `progress` (scale,
    best, evaluations without improvement, reductions) is in state_dict() and restored by load_progress()."""

    def __init__(self, optimizer: torch.optim.Optimizer, o, total_steps: int):
        self.factor, self.patience, self.floor = o.plateau_factor, o.plateau_patience, o.min_lr_ratio
        self.progress = {"scale": 1.0, "best": None, "bad": 0, "reductions": 0}
        super().__init__(optimizer, lambda step: lr_factor(o, step, total_steps) * self.progress["scale"])

    def observe(self, value: float, mode: str) -> None:
        """One evaluation's metric (the same on every rank); mode: "max" or "min" is better."""
        p = self.progress
        if improved(value, p["best"], mode):
            p["best"], p["bad"] = value, 0
            return
        p["bad"] += 1
        if p["bad"] > self.patience:
            p["scale"], p["bad"], p["reductions"] = max(p["scale"] * self.factor, self.floor), 0, p["reductions"] + 1
            # The LR of the next optimizer step, as step() would compute it at this position.
            for group, base, fn in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
                group["lr"] = base * fn(self.last_epoch)
            self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def load_progress(self, saved: dict) -> None:
        """A checkpoint's scheduler state: its plateau progress, if it was a plateau schedule."""
        if "progress" in saved:
            self.progress = dict(saved["progress"])


def build_scheduler(o, optimizer: torch.optim.Optimizer, total_steps: int):
    if o.schedule == "plateau":
        return Plateau(optimizer, o, total_steps)
    if o.schedule == "onecycle":
        return OneCycleLR(optimizer, max_lr=o.lr, total_steps=max(1, total_steps),
                          pct_start=max(o.warmup_steps / max(1, total_steps), 0.01) if o.warmup_steps else 0.3)
    return LambdaLR(optimizer, lambda step: lr_factor(o, step, total_steps))
