"""SE-ResNets for 32x32 images (Hu et al. 2018): the CIFAR ResNets with squeeze-and-excitation.

Every basic block rescales its residual branch per channel before the addition:
global average pool -> FC(C -> C/r) -> ReLU -> FC(C/r -> C) -> sigmoid -> multiply,
with the reduction ratio r = model.se_reduction (16 in the paper). Stages, shortcuts
(1x1 stride-2 projections where the map shrinks) and stems are those of resnet_cifar.py.
Fashion-MNIST runs by config (1 channel, zero-padded to 32x32: data.name=fashion_mnist data.pad_to=32).

Result: docs/results.md.

    python recipes/senet_cifar.py                                 # SE-ResNet-20 on CIFAR-10
    torchrun --nproc_per_node=4 recipes/senet_cifar.py model.arch=resnet18
    python recipes/senet_cifar.py data.name=fashion_mnist data.pad_to=32      # offline, real data
    python recipes/senet_cifar.py --config recipes/configs/senet_cifar_debug.yaml
"""
from dataclasses import dataclass, field
import torch.nn as nn

from common.config import ranged
from common.models.resnet import ResNetConfig, resnet
from common.tasks import classifier


@dataclass
class ModelConfig(ResNetConfig):
    se_reduction: int = ranged(16, ge=1)  # squeeze-and-excitation reduction ratio r (bottleneck C/r)


@dataclass
class Config(classifier.ClassifierConfig):
    model: ModelConfig = field(default_factory=ModelConfig)


def build_model(m: ModelConfig, in_shape, num_classes: int) -> nn.Module:
    return resnet(m.arch, m.width_mult, in_shape[0], num_classes, se_reduction=m.se_reduction)


task = classifier.Classifier(Config, build_model, __file__, train_step=classifier.train_step)


if __name__ == "__main__":
    task.main()
