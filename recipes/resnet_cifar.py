"""ResNets for 32x32 images: CIFAR ResNet-20/32/56 (He et al. 2016, section 4.2) and ResNet-18.

ResNet-6n+2: a 3x3 conv stem, three stages of n basic blocks at 16/32/64 channels
(32x32 -> 16x16 -> 8x8), global average pool, FC. Where the feature map shrinks, the
shortcut is a 1x1 stride-2 projection with BatchNorm. ResNet-18: the same blocks,
[2, 2, 2, 2] at 64/128/256/512 channels, with a 3x3 stride-1 stem (no max pool) for 32x32 inputs.
Fashion-MNIST runs by config (1 channel, zero-padded to 32x32: data.name=fashion_mnist data.pad_to=32).

Result: see the README's results table.

    python recipes/resnet_cifar.py                                # CIFAR-10 (data.download=true to fetch it)
    torchrun --nproc_per_node=4 recipes/resnet_cifar.py model.arch=resnet18
    python recipes/resnet_cifar.py data.name=fashion_mnist data.pad_to=32     # offline, real data
    python recipes/resnet_cifar.py --config recipes/configs/resnet_cifar_debug.yaml
"""
from dataclasses import dataclass, field
from typing import Literal

import torch.nn as nn

from common.models.resnet import resnet
from common.tasks.classifier import Classifier, ClassifierConfig


@dataclass
class ModelConfig:
    arch: Literal["resnet20", "resnet32", "resnet56", "resnet18"] = "resnet20"  # network depth/width
    width_mult: float = 1.0  # scales every stage's channels (debug configs shrink the net)


@dataclass
class Config(ClassifierConfig):
    model: ModelConfig = field(default_factory=ModelConfig)


def build_model(m: ModelConfig, in_shape, num_classes: int) -> nn.Module:
    return resnet(m.arch, m.width_mult, in_shape[0], num_classes)


task = Classifier(Config, build_model, __file__)


if __name__ == "__main__":
    task.main()
