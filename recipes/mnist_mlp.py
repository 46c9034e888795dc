"""A fully connected net on 28x28 grayscale digits or clothes (MNIST, Fashion-MNIST).

flatten 784 -> [Linear -> ReLU -> Dropout] x len(hidden) -> Linear -> 10 logits.

Result: see the README's results table (real Fashion-MNIST test accuracy, hardware, wall time).

    python recipes/mnist_mlp.py                                   # one process, CPU or GPU
    torchrun --nproc_per_node=2 recipes/mnist_mlp.py              # DDP, same global batch
    python recipes/mnist_mlp.py --config recipes/configs/mnist_mlp_debug.yaml   # seconds, synthetic data
"""
import math
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
    hidden: list[int] = field(default_factory=lambda: [1024, 1024])  # widths of the hidden layers
    dropout: float = 0.2  # dropout after each hidden layer


@dataclass
class Config(BaseConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    label_smoothing: float = 0.0  # cross-entropy label smoothing


def build_model(m: ModelConfig, in_shape, num_classes: int) -> nn.Module:
    layers, width = [nn.Flatten()], math.prod(in_shape)
    for h in m.hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(m.dropout)]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


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
