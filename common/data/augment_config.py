"""The augmentation keys every classifier that reads images shares (in-memory datasets, image folders):
one declaration, so `data.auto_augment` and the others mean the same on every recipe."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.fields import IGNORED, Fixed, setting

AUTO_AUGMENT = ("none", "autoaugment", "randaugment", "ta_wide", "augmix")


@dataclass
class AugmentConfig:
    auto_augment: Literal["none", "autoaugment", "randaugment", "ta_wide", "augmix"] = setting("none", evaluate=IGNORED)  # per-sample policy of torchvision.transforms.v2 (as torchvision's presets); none = off
    randaugment_magnitude: int = setting(9, ge=0, le=30, evaluate=IGNORED, read_when="data.auto_augment=randaugment")  # RandAugment magnitude (of 31 bins)
    randaugment_ops: int = setting(2, ge=1, evaluate=IGNORED, read_when="data.auto_augment=randaugment")  # RandAugment ops per image
    augmix_severity: int = setting(3, ge=1, le=10, evaluate=IGNORED, read_when="data.auto_augment=augmix")  # AugMix severity
    random_erase: float = setting(0.0, ge=0, le=1, evaluate=IGNORED)  # RandomErasing probability, after normalisation; 0 = off
    mixup_alpha: float = setting(0.0, ge=0, evaluate=IGNORED)  # MixUp Beta(alpha, alpha) on training batches (soft targets); 0 = off
    cutmix_alpha: float = setting(0.0, ge=0, evaluate=IGNORED)  # CutMix Beta(alpha, alpha); with MixUp too, each batch picks one at random; 0 = off
    ra_reps: int = setting(1, ge=1, evaluate=IGNORED, resume=Fixed("the epoch's order and length"))  # repeated augmentation: each sample ra_reps times, on different ranks; epoch: docs/data.md; 1 = off
