"""A small CNN on 28x28 grayscale digits or clothes (MNIST, Fashion-MNIST).

conv5x5(24) -> ReLU -> maxpool -> conv5x5(32) -> ReLU -> maxpool -> dropout -> FC(256) -> FC(10)
1x28x28 -> 24x14x14 -> 32x7x7 -> 256 -> 10 logits.

Result: see the README's results table (real Fashion-MNIST test accuracy, hardware, wall time).

    python recipes/mnist_cnn.py                                   # one process, CPU or GPU
    torchrun --nproc_per_node=2 recipes/mnist_cnn.py              # DDP, same global batch
    python recipes/mnist_cnn.py --config recipes/configs/mnist_cnn_debug.yaml   # seconds, synthetic data
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
    channels: list[int] = field(default_factory=lambda: [24, 32])  # output channels of the two conv layers
    hidden: int = 256  # width of the hidden fully connected layer; 0 = straight to the logits
    dropout: float = 0.25  # dropout before the fully connected layers


@dataclass
class Config(BaseConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    label_smoothing: float = 0.0  # cross-entropy label smoothing


def build_model(m: ModelConfig, in_shape, num_classes: int) -> nn.Module:
    c, h, w = in_shape
    c1, c2 = m.channels
    flat = c2 * (h // 4) * (w // 4)
    head = [nn.Linear(flat, m.hidden), nn.ReLU(), nn.Linear(m.hidden, num_classes)] if m.hidden else [nn.Linear(flat, num_classes)]
    return nn.Sequential(
        nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(m.dropout), *head,
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
