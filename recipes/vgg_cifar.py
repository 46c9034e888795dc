"""VGG-11/13/16/19 with BatchNorm for 32x32 images (Simonyan & Zisserman 2015; BN as in torchvision's vgg*_bn).

Stacks of 3x3 conv -> BatchNorm -> ReLU with 2x2 max pools between stages:
32x32 -> 16 -> 8 -> 4 -> 2 -> 1, so the classifier is a single Linear(512, classes) on the
1x1x512 map instead of ImageNet's 4096-wide FC layers (too many parameters for 32x32 data).
Fashion-MNIST runs by config (1 channel, zero-padded to 32x32: data.name=fashion_mnist data.pad_to=32).

Result: see the README's results table.

    python recipes/vgg_cifar.py                                   # VGG-16-BN on CIFAR-10
    torchrun --nproc_per_node=4 recipes/vgg_cifar.py model.depth=19
    python recipes/vgg_cifar.py data.name=fashion_mnist data.pad_to=32        # offline, real data
    python recipes/vgg_cifar.py --config recipes/configs/vgg_cifar_debug.yaml
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

LAYOUTS = {  # conv widths per stage; "M" = 2x2 max pool (configurations A, B, D, E of the paper)
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


@dataclass
class ModelConfig:
    depth: Literal[11, 13, 16, 19] = 16  # VGG variant
    width_mult: float = 1.0  # scales every conv's channels (debug configs shrink the net)


@dataclass
class Config(BaseConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    label_smoothing: float = 0.0  # cross-entropy label smoothing


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
