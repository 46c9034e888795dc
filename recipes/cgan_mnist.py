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
The judge: trained on first use and cached (docs/generative.md, "The judge").
Result: val/fd 34.0 and val/label_acc 86.4% (real images: 91.35%) on real Fashion-MNIST after the
default 5 epochs, 7 min on a 2-core CPU shared with other jobs (README, "Generative recipes").

    python recipes/cgan_mnist.py                                  # Fashion-MNIST, one process
    torchrun --nproc_per_node=2 recipes/cgan_mnist.py             # DDP, same global batch
    python recipes/cgan_mnist.py --config recipes/configs/cgan_mnist_debug.yaml  # seconds, synthetic data
"""
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.config import ranged, seed_bits
from common.models.maxout import Maxout
from common.tasks import gan
from common.train.log import Grid


@dataclass
class ModelConfig:
    z_dim: int = ranged(100, ge=1)  # noise dimensions, z ~ U(0, 1) (the paper's unit hypercube)
    g_z_hidden: int = ranged(200, ge=1)  # generator: ReLU units for z
    g_y_hidden: int = ranged(1000, ge=1)  # generator: ReLU units for the one-hot label
    g_joint_hidden: int = ranged(1200, ge=1)  # generator: joint ReLU layer
    g_dropout: float = ranged(0.5, ge=0, lt=1)  # generator: dropout after the joint layer, active when sampling too (docstring)
    d_x_units: int = ranged(240, ge=1)  # discriminator: maxout units for the image
    d_y_units: int = ranged(50, ge=1)  # discriminator: maxout units for the label
    d_joint_units: int = ranged(240, ge=1)  # discriminator: joint maxout units
    d_pieces: int = ranged(5, ge=1)  # pieces of the image and label maxout layers
    d_joint_pieces: int = ranged(4, ge=1)  # pieces of the joint maxout layer
    d_dropout: float = ranged(0.5, ge=0, lt=1)  # discriminator dropout before and after the joint maxout layer


@dataclass
class Config(gan.GanConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: gan.GanEvalConfig = field(default_factory=lambda: gan.GanEvalConfig(grid=100))


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
        return self.joint(h).view(z.shape[0], *self.shape)  # not len(z): it would fix the exported batch size


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


def build_models(cfg: Config, loaders) -> dict:
    args = (cfg.model, loaders.shape, loaders.num_classes)
    return {"G": Generator(*args), "D": Discriminator(*args)}


def train_step(cfg, batch, state, rt) -> dict:
    real, y = batch
    G, D, n = state.models["G"], state.models["D"], len(real)
    z = gan.batch_noise(rt, n, (cfg.model.z_dim,), "uniform01")  # this rank's rows of the global batch's noise
    with rt.autocast():
        fake = G(z, y)  # one G forward; the D step sees it detached
        loss_d, probs = gan.d_loss(*D(torch.cat([real, fake.detach()]), torch.cat([y, y])).split(n))
    rt.backward(loss_d)
    rt.step(state.optims["D"])
    loss_g = gan.g_step(rt, state, D, fake, y)  # through D frozen: no D gradients, no D all-reduce
    return {"loss_d": loss_d.detach(), "loss_g": loss_g, **probs}


@torch.no_grad()
def evaluate(cfg, state, rt, loader, judge) -> dict:
    G = state.eval_model("G")
    classes = G.num_classes
    cols = max(1, cfg.eval.grid // classes)
    z = gan.noise_bank(max(cfg.eval.samples, cols), (cfg.model.z_dim,), "uniform01", cfg.seed, rt.device)
    # Grid: one row per class, the same noise down each column.
    grid_y = torch.arange(classes, device=rt.device).repeat_interleave(cols)
    grid_z = z[:cols].repeat(classes, 1)
    # G's dropout is part of its noise (as in pix2pix): D only ever saw samples drawn with it, so
    # they are drawn with it here too, from a fixed seed that leaves the training RNG untouched.
    with gan.evaluating(G), torch.random.fork_rng(devices=[rt.device.index or 0] if rt.device.type == "cuda" else []):
        torch.manual_seed(seed_bits(cfg.seed + 1 + rt.rank))
        G.joint.train()
        grid = Grid(G(grid_z, grid_y), nrow=cols)
        # Sample i asks for class i % classes: balanced, and the same requests every evaluation.
        return {**gan.quality(cfg, rt, judge, loader, lambda idx: (G(z[idx], idx % classes), idx % classes),
                              real_labels=True), "class_rows": grid}


task = gan.GanTask(Config, build_models, __file__, train_step=train_step, evaluate=evaluate,
                   inputs=gan.noise_inputs("uniform01", labels=True))  # --export: G(z, real labels)


if __name__ == "__main__":
    task.main()
