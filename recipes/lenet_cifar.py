"""LeNet-style CIFAR net: the smallest end-to-end example (the PyTorch "training a classifier" net).

conv5x5 3->6 -> ReLU -> maxpool -> conv5x5 6->16 -> ReLU -> maxpool -> FC 400->120->84->classes
3x32x32 -> 6x28x28 -> 6x14x14 -> 16x10x10 -> 16x5x5 = 400 -> 120 -> 84 -> 10 logits.
Fashion-MNIST runs by config (1 channel, zero-padded to 32x32: data.name=fashion_mnist data.pad_to=32).

Result: docs/results.md.

    python recipes/lenet_cifar.py                                 # CIFAR-10
    python recipes/lenet_cifar.py data.name=fashion_mnist data.pad_to=32      # offline, real data
    torchrun --nproc_per_node=2 recipes/lenet_cifar.py
"""
from dataclasses import dataclass, field

import torch.nn as nn

from common.config import ranged
from common.tasks import classifier


@dataclass
class ModelConfig:
    channels: list[int] = ranged(factory=lambda: [6, 16], length=2, ge=1)  # output channels of the two conv layers
    hidden: list[int] = ranged(factory=lambda: [120, 84], length=2, ge=1)  # widths of the two hidden FC layers


@dataclass
class Config(classifier.ClassifierConfig):
    model: ModelConfig = field(default_factory=ModelConfig)


def build_model(m: ModelConfig, in_shape, num_classes: int) -> nn.Module:
    c, h, w = in_shape
    c1, c2 = m.channels
    h1, h2 = m.hidden
    def side(s):  # two (5x5 valid conv, 2x2 pool) stages: 32 -> 28 -> 14 -> 10 -> 5
        return ((s - 4) // 2 - 4) // 2

    flat = c2 * side(h) * side(w)
    return nn.Sequential(
        nn.Conv2d(c, c1, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, num_classes),
    )


task = classifier.Classifier(Config, build_model, __file__, train_step=classifier.train_step)


if __name__ == "__main__":
    task.main()
