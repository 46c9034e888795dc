"""ResNets for 32x32 images: CIFAR ResNet-20/32/56 (He et al. 2016, section 4.2) and ResNet-18.

The networks are in common/models/resnet.py (senet_cifar.py uses the same blocks with an SE gate):
ResNet-6n+2 is a 3x3 conv stem, three stages of n basic blocks at 16/32/64 channels
(32x32 -> 16x16 -> 8x8), global average pool, FC; a 1x1 stride-2 projection with BatchNorm where
the map shrinks. ResNet-18: [2, 2, 2, 2] blocks at 64/128/256/512 channels, 3x3 stride-1 stem.
Fashion-MNIST runs by config (1 channel, zero-padded to 32x32: data.name=fashion_mnist data.pad_to=32).

Result: docs/results.md.

    python recipes/resnet_cifar.py                      # CIFAR-10 (data.download=true fetches it)
    torchrun --nproc_per_node=4 recipes/resnet_cifar.py model.arch=resnet18
    python recipes/resnet_cifar.py --config recipes/configs/resnet_cifar_debug.yaml   # seconds, synthetic
"""
from dataclasses import dataclass, field

from common.models.resnet import ResNetConfig, resnet
from common.tasks import classifier


@dataclass
class Config(classifier.ClassifierConfig):
    model: ResNetConfig = field(default_factory=ResNetConfig)


def build_model(m: ResNetConfig, in_shape, num_classes: int):
    return resnet(m.arch, m.width_mult, in_shape[0], num_classes)


task = classifier.Classifier(Config, build_model, __file__, train_step=classifier.train_step)


if __name__ == "__main__":
    task.main()
