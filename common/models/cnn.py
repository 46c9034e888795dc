"""The small CNN of recipes/mnist_cnn.py, also the feature extractor of the FD judge (common/metrics/fid.py).

conv5x5(c1) -> ReLU -> maxpool -> conv5x5(c2) -> ReLU -> maxpool -> dropout -> FC(hidden) -> FC(classes)
1x28x28 -> c1x14x14 -> c2x7x7 -> hidden -> classes logits. A plain nn.Sequential: the judge takes
the input of its last Linear layer as features.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.config import ranged

import torch.nn as nn


@dataclass
class CNNConfig:
    channels: list[int] = ranged(factory=lambda: [24, 32], length=2, ge=1)  # output channels of the two conv layers
    hidden: int = ranged(256, ge=0)  # width of the hidden fully connected layer; 0 = straight to the logits
    dropout: float = ranged(0.25, ge=0, lt=1)  # dropout before the fully connected layers


def small_cnn(m: CNNConfig, in_shape, num_classes: int) -> nn.Sequential:
    c, h, w = in_shape
    c1, c2 = m.channels
    flat = c2 * (h // 4) * (w // 4)
    head = [nn.Linear(flat, m.hidden), nn.ReLU(), nn.Linear(m.hidden, num_classes)] if m.hidden else \
        [nn.Linear(flat, num_classes)]
    return nn.Sequential(
        nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(m.dropout), *head,
    )
