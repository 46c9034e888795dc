"""MixUp and CutMix (torchvision.transforms.v2) on a training batch on the device: the one implementation
every classifier loader uses (in-memory and streaming).

torchvision mixes each sample with the one before it in the batch, with one lambda (MixUp) or one box
(CutMix) per batch. Here the batch is the global batch: each rank's shard comes led by its
predecessor in the global batch (`TrainPlan.lead`, fetched and augmented like the shard), the draw is
seeded by (seed, epoch, step) alone, and the lead is dropped after mixing. So the mixed global batch
is the same whatever the world size or grad_accum, a resumed step mixes as it did, and the global
RNG is untouched.
"""
from __future__ import annotations

import torch

from common.config import seed_bits


class BatchMix:
    """fn (v2.MixUp, v2.CutMix or a RandomChoice of both) applied to (lead + shard, labels), seeded per step."""

    def __init__(self, fn, seed: int):
        self.fn, self.seed = fn, seed

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int):
        """x, y: a rank's batch with the lead sample first; returns the shard mixed, soft targets, lead dropped."""
        with torch.random.fork_rng(devices=[]):  # the draws (lambda, box, choice) are on the CPU
            torch.manual_seed(seed_bits(((self.seed * 1_000_003 + epoch) * 1_000_003 + step) * 4096))
            x, y = self.fn(x, y)
        return x[1:], y[1:]


def batch_mix(d, num_classes: int, seed: int) -> BatchMix | None:
    """data.mixup_alpha / data.cutmix_alpha as a BatchMix (None when both are 0)."""
    if d.mixup_alpha <= 0 and d.cutmix_alpha <= 0:
        return None
    from torchvision.transforms import v2
    mixes = [v2.MixUp(alpha=d.mixup_alpha, num_classes=num_classes)] if d.mixup_alpha > 0 else []
    mixes += [v2.CutMix(alpha=d.cutmix_alpha, num_classes=num_classes)] if d.cutmix_alpha > 0 else []
    return BatchMix(mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes), seed)

