"""VGG-11/13/16/19 with BatchNorm for 32x32 images (Simonyan & Zisserman 2015; BN as in torchvision's vgg*_bn).

Stacks of 3x3 conv -> BatchNorm -> ReLU with 2x2 max pools between stages:
32x32 -> 16 -> 8 -> 4 -> 2 -> 1, so the classifier is a single Linear(512, classes) on the
1x1x512 map instead of ImageNet's 4096-wide FC layers (too many parameters for 32x32 data).
Fashion-MNIST runs by config (1 channel, zero-padded to 32x32: data.name=fashion_mnist data.pad_to=32).

Result: docs/results.md.

    python recipes/vgg_cifar.py                                   # VGG-16-BN on CIFAR-10
    torchrun --nproc_per_node=4 recipes/vgg_cifar.py model.depth=19
    python recipes/vgg_cifar.py data.name=fashion_mnist data.pad_to=32        # offline, real data
    python recipes/vgg_cifar.py --config recipes/configs/vgg_cifar_debug.yaml
"""
from dataclasses import dataclass, field
from typing import Literal

import torch.nn as nn

from common.config import ranged
from common.tasks import classifier


LAYOUTS = {  # conv widths per stage; "M" = 2x2 max pool (configurations A, B, D, E of the paper)
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


@dataclass
class ModelConfig:
    depth: Literal[11, 13, 16, 19] = 16  # VGG variant
    width_mult: float = ranged(1.0, gt=0)  # scales every conv's channels (debug configs shrink the net)


@dataclass
class Config(classifier.ClassifierConfig):
    model: ModelConfig = field(default_factory=ModelConfig)


def build_model(m: ModelConfig, in_shape, num_classes: int) -> nn.Module:
    layers, c_in = [], in_shape[0]
    for v in LAYOUTS[m.depth]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            c = max(1, round(v * m.width_mult))
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))


task = classifier.Classifier(Config, build_model, __file__, train_step=classifier.train_step)


if __name__ == "__main__":
    task.main()
