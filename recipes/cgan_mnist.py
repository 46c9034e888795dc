"""Conditional GAN (Mirza & Osindero 2014) on 28x28 grayscale images: the class is an input of both nets.

G: z ~ U(0, 1)^100 -> 200 ReLU; one-hot y -> 1000 ReLU; concat -> 1200 ReLU -> dropout 0.5 -> 784 tanh
D: x -> maxout 240 units x 5 pieces; y -> maxout 50 x 5; concat -> dropout 0.5 -> maxout 240 x 4
   -> dropout 0.5 -> 1 logit
Sizes, pieces and dropout are the paper's MNIST model (section 4.1). Changes: tanh output on
[-1, 1] data, the non-saturating G loss, Adam(2e-4, beta1 0.5). Fakes are asked for the labels
of the real batch, so both halves of D's batch have the same class mix.
G learns to take much of its variety from its dropout masks rather than from z, so samples are
drawn with G's dropout active (eval mode with it off gives one near-identical image per class).

Quality at each evaluation: val/fd (Fréchet distance to the real test images in the judge
classifier's features) and val/label_acc: percent of generated samples the judge classifies as
the class they were asked to show (val/real_label_acc: the judge on real test images, the ceiling).
The judge: `python recipes/mnist_cnn.py out_dir=runs/fid_classifier train.epochs=5` (README, "Generative recipes").
Result: val/fd 34.0 and val/label_acc 86.4% (real images: 91.35%) on real Fashion-MNIST after the
default 5 epochs, 7 min on a 2-core CPU shared with other jobs (README, "Generative recipes").

    python recipes/cgan_mnist.py                                  # Fashion-MNIST, one process
    torchrun --nproc_per_node=2 recipes/cgan_mnist.py             # DDP, same global batch
    python recipes/cgan_mnist.py --config recipes/configs/cgan_mnist_debug.yaml  # seconds, synthetic data
"""
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

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
    z_dim: int = 100  # noise dimensions, z ~ U(0, 1) (the paper's unit hypercube)
    g_z_hidden: int = 200  # generator: ReLU units for z
    g_y_hidden: int = 1000  # generator: ReLU units for the one-hot label
    g_joint_hidden: int = 1200  # generator: joint ReLU layer
    g_dropout: float = 0.5  # generator: dropout after the joint layer, active when sampling too (docstring)
    d_x_units: int = 240  # discriminator: maxout units for the image
    d_y_units: int = 50  # discriminator: maxout units for the label
    d_joint_units: int = 240  # discriminator: joint maxout units
    d_pieces: int = 5  # pieces of the image and label maxout layers
    d_joint_pieces: int = 4  # pieces of the joint maxout layer
    d_dropout: float = 0.5  # discriminator dropout before and after the joint maxout layer


@dataclass
class Config(BaseConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: gan.GanEvalConfig = field(default_factory=lambda: gan.GanEvalConfig(grid=100))
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
    def __init__(self, m: ModelConfig, shape, num_classes: int):
        super().__init__()
        self.z = nn.Sequential(nn.Linear(m.z_dim, m.g_z_hidden), nn.ReLU())
        self.y = nn.Sequential(nn.Linear(num_classes, m.g_y_hidden), nn.ReLU())
        self.joint = nn.Sequential(nn.Linear(m.g_z_hidden + m.g_y_hidden, m.g_joint_hidden), nn.ReLU(),
                                   nn.Dropout(m.g_dropout), nn.Linear(m.g_joint_hidden, shape[0] * shape[1] * shape[2]),
                                   nn.Tanh())
        self.shape, self.num_classes = tuple(shape), num_classes

    def forward(self, z, y):
        h = torch.cat([self.z(z), self.y(F.one_hot(y, self.num_classes).to(z.dtype))], 1)
        return self.joint(h).view(len(z), *self.shape)


class Discriminator(nn.Module):
    def __init__(self, m: ModelConfig, shape, num_classes: int):
        super().__init__()
        self.x = Maxout(shape[0] * shape[1] * shape[2], m.d_x_units, m.d_pieces)
        self.y = Maxout(num_classes, m.d_y_units, m.d_pieces)
        self.joint = nn.Sequential(nn.Dropout(m.d_dropout), Maxout(m.d_x_units + m.d_y_units, m.d_joint_units,
                                                                   m.d_joint_pieces),
                                   nn.Dropout(m.d_dropout), nn.Linear(m.d_joint_units, 1))
        self.num_classes = num_classes

    def forward(self, x, y):
        y = F.one_hot(y, self.num_classes).to(x.dtype)
        return self.joint(torch.cat([self.x(x.flatten(1)), self.y(y)], 1))


def build_data(cfg: Config, rt):
    """Images in [-1, 1]; the eval split is the real reference set of val/fd."""
    return gan_data(cfg, rt, eval_limit=cfg.eval.samples)


def build_state(cfg: Config, rt, loaders) -> TrainState:
    rt.seed()
    args = (cfg.model, loaders.shape, loaders.num_classes)
    models = {"G": rt.wrap(Generator(*args)), "D": rt.wrap(Discriminator(*args))}
    optims = {k: build_optimizer(cfg.optim, m) for k, m in models.items()}
    scheds = {k: build_scheduler(cfg.optim, o, total_steps(cfg, loaders.train)) for k, o in optims.items()}
    state = TrainState(models=models, optims=optims, scheds=scheds)
    state.add_ema("G", cfg.train.ema_decay)
    return state


def train_step(batch, state: TrainState, rt) -> dict:
    real, y = batch
    G, D, n = state.models["G"], state.models["D"], len(real)
    z = gan.batch_noise(rt, n, (rt.cfg.model.z_dim,), "uniform01")  # this rank's rows of the global batch's noise
    with rt.autocast():
        fake = G(z, y)  # one G forward; the D step sees it detached
        loss_d, probs = gan.d_loss(*D(torch.cat([real, fake.detach()]), torch.cat([y, y])).split(n))
    rt.backward(loss_d)
    rt.step(state.optims["D"])
    # G step: D frozen and unwrapped (no D gradients, no D all-reduce); no BatchNorm in D.
    with rt.frozen(D) as D_, rt.autocast():
        loss_g = gan.g_loss(D_(fake, y))
    rt.backward(loss_g)
    rt.step(state.optims["G"])
    return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), **probs}


@torch.no_grad()
def evaluate(state: TrainState, rt, loader, judge=None) -> dict:
    cfg, G = rt.cfg, state.eval_model("G")
    classes = G.num_classes
    cols = max(1, cfg.eval.grid // classes)
    z = gan.noise_bank(max(cfg.eval.samples, cols), (cfg.model.z_dim,), "uniform01", cfg.seed, rt.device)
    # Grid: one row per class, the same noise down each column.
    grid_y = torch.arange(classes, device=rt.device).repeat_interleave(cols)
    grid_z = z[:cols].repeat(classes, 1)
    # G's dropout is part of its noise (as in pix2pix): D only ever saw samples drawn with it, so
    # they are drawn with it here too, from a fixed seed that leaves the training RNG untouched.
    with gan.evaluating(G), torch.random.fork_rng(devices=[rt.device.index or 0] if rt.device.type == "cuda" else []):
        torch.manual_seed(cfg.seed + 1 + rt.rank)
        G.joint.train()
        gan.log_grid(rt, "class_rows", state.step, G(grid_z, grid_y), nrow=cols)
        # Sample i asks for class i % classes: balanced, and the same requests every evaluation.
        return gan.quality(rt, judge, loader, lambda idx: (G(z[idx], idx % classes), idx % classes),
                           cfg.eval.samples, real_labels=True)


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
