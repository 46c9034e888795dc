"""A fully connected net on 28x28 grayscale digits or clothes (MNIST, Fashion-MNIST).

flatten 784 -> [Linear -> ReLU -> Dropout] x len(hidden) -> Linear -> 10 logits.

Result: docs/results.md (real Fashion-MNIST test accuracy, hardware, wall time).

    python recipes/mnist_mlp.py                                   # one process, CPU or GPU
    torchrun --nproc_per_node=2 recipes/mnist_mlp.py              # DDP, same global batch
    python recipes/mnist_mlp.py --config recipes/configs/mnist_mlp_debug.yaml   # seconds, synthetic data
"""
import math
from dataclasses import dataclass, field

import torch.nn as nn

from common.config import ranged
from common.tasks import classifier


@dataclass
class ModelConfig:
    hidden: list[int] = ranged(factory=lambda: [1024, 1024], ge=1)  # widths of the hidden layers
    dropout: float = ranged(0.2, ge=0, lt=1)  # dropout after each hidden layer


@dataclass
class Config(classifier.ClassifierConfig):
    model: ModelConfig = field(default_factory=ModelConfig)


def build_model(m: ModelConfig, in_shape, num_classes: int) -> nn.Module:
    layers, width = [nn.Flatten()], math.prod(in_shape)
    for h in m.hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(m.dropout)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


task = classifier.Classifier(Config, build_model, __file__, train_step=classifier.train_step)


if __name__ == "__main__":
    task.main()
