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
import torch.nn.functional as F

from common.config import BaseConfig, parse_cli
from common.data import classification_data
from common.loop import fit, total_steps
from common.metrics import accuracy, evaluate_classifier
from common.optim import build_optimizer, build_scheduler
from common.engines import make_runtime
from common.state import TrainState

ARCHS = {  # name: (blocks per stage, channels per stage)
    "resnet20": ([3, 3, 3], [16, 32, 64]),
    "resnet32": ([5, 5, 5], [16, 32, 64]),
    "resnet56": ([9, 9, 9], [16, 32, 64]),
    "resnet18": ([2, 2, 2, 2], [64, 128, 256, 512]),
}


@dataclass
class ModelConfig:
    arch: Literal["resnet20", "resnet32", "resnet56", "resnet18"] = "resnet20"  # network depth/width
    width_mult: float = 1.0  # scales every stage's channels (debug configs shrink the net)


@dataclass
class Config(BaseConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    label_smoothing: float = 0.0  # cross-entropy label smoothing


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:  # projection where the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], channels: list[int], in_channels: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU())
        layers, c_in = [], channels[0]
        for i, (n, c) in enumerate(zip(blocks, channels)):
            for j in range(n):
                layers.append(BasicBlock(c_in, c, stride=2 if i > 0 and j == 0 else 1))
                c_in = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build_model(m: ModelConfig, in_shape, num_classes: int) -> nn.Module:
    blocks, channels = ARCHS[m.arch]
    return ResNet(blocks, [max(1, round(c * m.width_mult)) for c in channels], in_shape[0], num_classes)


def build_state(cfg: Config, rt, loaders) -> TrainState:
    rt.seed()
    model = rt.wrap(build_model(cfg.model, loaders.shape, loaders.num_classes))
    opt = build_optimizer(cfg.optim, model)
    sched = build_scheduler(cfg.optim, opt, total_steps(cfg, loaders.train))
    state = TrainState(models={"net": model}, optims={"net": opt}, scheds={"net": sched})
    state.add_ema("net", cfg.train.ema_decay)
    return state


def train_step(batch, state: TrainState, rt) -> dict:
    x, y = batch
    with rt.autocast():
        logits = state.models["net"](x)
        loss = F.cross_entropy(logits, y, label_smoothing=rt.cfg.label_smoothing)
    rt.backward(loss)
    rt.step(state.optims["net"])
    return {"loss": loss.detach(), "acc1": accuracy(logits.detach(), y)}


def evaluate(state: TrainState, rt, loader) -> dict:
    return evaluate_classifier(state.eval_model("net"), rt, loader)


def main(argv=None):
    cli = parse_cli(Config, __file__, argv)
    with make_runtime(cli.cfg, cli.recipe) as rt:
        if cli.dry_run:
            return rt.dry_run()
        loaders = classification_data(cli.cfg, rt)
        state = build_state(cli.cfg, rt, loaders)
        return fit(cli.cfg, state, rt, loaders, train_step, evaluate)


if __name__ == "__main__":
    from common.entry import run
    run(main)
