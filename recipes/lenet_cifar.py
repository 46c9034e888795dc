"""LeNet-style CIFAR net: the smallest end-to-end example (the PyTorch "training a classifier" net).

conv5x5 3->6 -> ReLU -> maxpool -> conv5x5 6->16 -> ReLU -> maxpool -> FC 400->120->84->classes
3x32x32 -> 6x28x28 -> 6x14x14 -> 16x10x10 -> 16x5x5 = 400 -> 120 -> 84 -> 10 logits.
Fashion-MNIST runs by config (1 channel, zero-padded to 32x32: data.name=fashion_mnist data.pad_to=32).

Result: see the README's results table.

    python recipes/lenet_cifar.py                                 # CIFAR-10
    python recipes/lenet_cifar.py data.name=fashion_mnist data.pad_to=32      # offline, real data
    torchrun --nproc_per_node=2 recipes/lenet_cifar.py
"""
from dataclasses import dataclass, field

import torch.nn as nn
import torch.nn.functional as F

from common.config import BaseConfig, parse_cli
from common.data import classification_data
from common.loop import fit, total_steps
from common.metrics import accuracy, evaluate_classifier
from common.optim import build_optimizer, build_scheduler
from common.engines import make_runtime
from common.state import TrainState


@dataclass
class ModelConfig:
    channels: list[int] = field(default_factory=lambda: [6, 16])  # output channels of the two conv layers
    hidden: list[int] = field(default_factory=lambda: [120, 84])  # widths of the two hidden FC layers


@dataclass
class Config(BaseConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    label_smoothing: float = 0.0  # cross-entropy label smoothing


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
