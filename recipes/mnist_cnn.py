"""A small CNN on 28x28 grayscale digits or clothes (MNIST, Fashion-MNIST).

conv5x5(24) -> ReLU -> maxpool -> conv5x5(32) -> ReLU -> maxpool -> dropout -> FC(256) -> FC(10)
1x28x28 -> 24x14x14 -> 32x7x7 -> 256 -> 10 logits (common/models/cnn.py: the FD judge of the
generative recipes is this model too).

Result: docs/results.md (real Fashion-MNIST test accuracy, hardware, wall time).

    python recipes/mnist_cnn.py                                   # one process, CPU or GPU
    torchrun --nproc_per_node=2 recipes/mnist_cnn.py              # DDP, same global batch
    python recipes/mnist_cnn.py --config recipes/configs/mnist_cnn_debug.yaml   # seconds, synthetic data
"""
from dataclasses import dataclass, field

from common.models.cnn import CNNConfig, small_cnn
from common.tasks import classifier


@dataclass
class Config(classifier.ClassifierConfig):
    model: CNNConfig = field(default_factory=CNNConfig)


task = classifier.Classifier(Config, small_cnn, __file__, train_step=classifier.train_step)


if __name__ == "__main__":
    task.main()
