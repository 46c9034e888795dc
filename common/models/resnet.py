"""ResNets for 32x32 images, with an optional squeeze-and-excitation gate in every block.

CIFAR ResNet-6n+2 (He et al. 2016, section 4.2): a 3x3 conv stem, three stages of n basic
blocks at 16/32/64 channels (32x32 -> 16x16 -> 8x8), global average pool, FC. Where the
feature map shrinks, the shortcut is a 1x1 stride-2 projection with BatchNorm. ResNet-18: the
same blocks, [2, 2, 2, 2] at 64/128/256/512 channels, 3x3 stride-1 stem (no max pool).
SE-ResNet (Hu et al. 2018): each block rescales its residual branch per channel before the
addition; se_reduction = 0 leaves the gate out, and the state_dict is then the plain ResNet's.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.config import ranged
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHS = {  # name: (blocks per stage, channels per stage)
    "resnet20": ([3, 3, 3], [16, 32, 64]),
    "resnet32": ([5, 5, 5], [16, 32, 64]),
    "resnet56": ([9, 9, 9], [16, 32, 64]),
    "resnet18": ([2, 2, 2, 2], [64, 128, 256, 512]),
}


@dataclass
class ResNetConfig:
    arch: Literal["resnet20", "resnet32", "resnet56", "resnet18"] = "resnet20"  # network depth/width
    width_mult: float = ranged(1.0, gt=0)  # scales every stage's channels (debug configs shrink the net)


class SqueezeExcite(nn.Module):
    """Channel gates in (0, 1) from globally pooled features:
    pool -> FC(C -> C/r) -> ReLU -> FC(C/r -> C) -> sigmoid -> multiply."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1, self.fc2 = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def forward(self, x):
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * gate[:, :, None, None]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, se_reduction: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.se = SqueezeExcite(c_out, se_reduction) if se_reduction else nn.Identity()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:  # projection where the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.se(self.bn2(self.conv2(out))) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], channels: list[int], in_channels: int, num_classes: int,
                 se_reduction: int = 0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU())
        layers, c_in = [], channels[0]
        for i, (n, c) in enumerate(zip(blocks, channels)):
            for j in range(n):
                layers.append(BasicBlock(c_in, c, 2 if i > 0 and j == 0 else 1, se_reduction))
                c_in = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet(arch: str, width_mult: float, in_channels: int, num_classes: int, se_reduction: int = 0) -> ResNet:
    blocks, channels = ARCHS[arch]
    return ResNet(blocks, [max(1, round(c * width_mult)) for c in channels], in_channels, num_classes, se_reduction)
