"""The original GAN (Goodfellow et al. 2014) on 28x28 grayscale images, fully connected nets.

G: z ~ U(-1, 1)^100 -> 1200 ReLU -> 1200 ReLU -> 784 tanh
D: x -> dropout 0.2 -> maxout 240 units x 5 pieces -> dropout 0.5 -> maxout 240 x 5 -> dropout 0.5 -> 1 logit
The layer sizes, maxout and dropout are those of the paper's released MNIST model. Changes, for
speed and stability: tanh output on [-1, 1] data (not sigmoid on [0, 1]), the non-saturating
G loss (the paper's own advice), and Adam(2e-4, beta1 0.5) instead of SGD with momentum.

Result: val/fd 35.2 on real Fashion-MNIST after the default 6 epochs, 12 min on a 2-core CPU
shared with other jobs (README, "Generative recipes": grids, the FD scale). val/fd needs the judge
classifier first: `python recipes/mnist_cnn.py out_dir=runs/fid_classifier train.epochs=5`
(or eval.classifier=none to skip it).

    python recipes/gan_mnist.py                                   # Fashion-MNIST, one process
    torchrun --nproc_per_node=2 recipes/gan_mnist.py              # DDP, same global batch
    python recipes/gan_mnist.py --config recipes/configs/gan_mnist_debug.yaml   # seconds, synthetic data
"""
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn

from common import gan
from common.config import BaseConfig, CkptConfig, OptimConfig, parse_cli
from common.fid import load_judge
from common.images import gan_data
from common.loop import fit, total_steps
from common.optim import build_optimizer, build_scheduler
from common.engines import make_runtime
from common.state import TrainState


@dataclass
class ModelConfig:
    z_dim: int = 100  # noise dimensions, z ~ U(-1, 1)
    g_hidden: list[int] = field(default_factory=lambda: [1200, 1200])  # generator ReLU layer widths
    d_units: int = 240  # maxout units per discriminator layer
    d_pieces: int = 5  # linear pieces per maxout unit
    d_layers: int = 2  # maxout layers in the discriminator
    d_input_dropout: float = 0.2  # dropout on the discriminator's input pixels
    d_dropout: float = 0.5  # dropout after each maxout layer


@dataclass
class Config(BaseConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: gan.GanEvalConfig = field(default_factory=gan.GanEvalConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=2e-4, betas=[0.5, 0.999],
                                                                   schedule="constant"))
    ckpt: CkptConfig = field(default_factory=lambda: CkptConfig(best_metric="val/fd", best_mode="min"))


class Maxout(nn.Module):
    """max over `pieces` linear functions per unit (Goodfellow et al. 2013)."""

    def __init__(self, d_in: int, units: int, pieces: int):
        super().__init__()
        self.linear, self.units, self.pieces = nn.Linear(d_in, units * pieces), units, pieces

    def forward(self, x):
        return self.linear(x).view(len(x), self.units, self.pieces).amax(-1)


class Generator(nn.Module):
    def __init__(self, m: ModelConfig, shape):
        super().__init__()
        layers, width = [], m.z_dim
        for h in m.g_hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.net = nn.Sequential(*layers, nn.Linear(width, shape[0] * shape[1] * shape[2]), nn.Tanh())
        self.shape = tuple(shape)

    def forward(self, z):
        return self.net(z).view(len(z), *self.shape)


def build_discriminator(m: ModelConfig, shape) -> nn.Module:
    layers, width = [nn.Flatten(), nn.Dropout(m.d_input_dropout)], shape[0] * shape[1] * shape[2]
    for _ in range(m.d_layers):
        layers += [Maxout(width, m.d_units, m.d_pieces), nn.Dropout(m.d_dropout)]
        width = m.d_units
    return nn.Sequential(*layers, nn.Linear(width, 1))


def build_data(cfg: Config, rt):
    """Images in [-1, 1]; the eval split is the real reference set of val/fd."""
    return gan_data(cfg, rt, eval_limit=cfg.eval.samples)


def build_state(cfg: Config, rt, loaders) -> TrainState:
    rt.seed()
    models = {"G": rt.wrap(Generator(cfg.model, loaders.shape)),
              "D": rt.wrap(build_discriminator(cfg.model, loaders.shape))}
    optims = {k: build_optimizer(cfg.optim, m) for k, m in models.items()}
    scheds = {k: build_scheduler(cfg.optim, o, total_steps(cfg, loaders.train)) for k, o in optims.items()}
    state = TrainState(models=models, optims=optims, scheds=scheds)
    state.add_ema("G", cfg.train.ema_decay)
    return state


def train_step(batch, state: TrainState, rt) -> dict:
    real, _ = batch
    G, D, n = state.models["G"], state.models["D"], len(real)
    z = gan.batch_noise(rt, n, (rt.cfg.model.z_dim,), "uniform")  # this rank's rows of the global batch's noise
    with rt.autocast():
        fake = G(z)  # one G forward; the D step sees it detached
        loss_d, probs = gan.d_loss(*D(torch.cat([real, fake.detach()])).split(n))  # no BatchNorm: one forward
    rt.backward(loss_d)
    rt.step(state.optims["D"])
    # G step: D frozen and unwrapped, so no D gradients and no D all-reduce. D has no
    # BatchNorm, so scoring the fakes alone gives the same logits as in the joint batch.
    with rt.frozen(D) as D_, rt.autocast():
        loss_g = gan.g_loss(D_(fake))
    rt.backward(loss_g)
    rt.step(state.optims["G"])
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), **probs}


@torch.no_grad()
def evaluate(state: TrainState, rt, loader, judge=None) -> dict:
    cfg, G = rt.cfg, state.eval_model("G")
    z = gan.noise_bank(max(cfg.eval.samples, cfg.eval.grid), (cfg.model.z_dim,), "uniform", cfg.seed, rt.device)
    with gan.evaluating(G):
        gan.log_grid(rt, "fixed_noise", state.step, G(z[:cfg.eval.grid]))
        return gan.quality(rt, judge, loader, lambda idx: (G(z[idx]), None), cfg.eval.samples)


def main(argv=None):
    cli = parse_cli(Config, __file__, argv)
    with make_runtime(cli.cfg, cli.recipe) as rt:
        if cli.dry_run:
            return rt.dry_run()
        judge = load_judge(cli.cfg.eval.classifier, rt.device)
        loaders = build_data(cli.cfg, rt)
        state = build_state(cli.cfg, rt, loaders)
        return fit(cli.cfg, state, rt, loaders, train_step, partial(evaluate, judge=judge))


if __name__ == "__main__":
    from common.entry import run
    run(main)
