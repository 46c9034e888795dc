"""DCGAN (Radford et al. 2016) at 32 or 64 px: Fashion-MNIST, CIFAR-10, or any folder of images.

G: z ~ U(-1, 1)^100 -> project to 4x4 (BN, ReLU) -> stride-2 5x5 (or 4x4) transposed convs with
   BN + ReLU, halving the channels at each doubling -> tanh at 32 or 64 px
D: stride-2 5x5 (or 4x4) convs with LeakyReLU(0.2) and BN (none on the input layer), doubling
   the channels down to 4x4 -> flatten -> 1 logit
The number of layers follows the image size: 3 up/down stages for 32 px, 4 for 64 px (the paper's
LSUN/CelebA model: 1024-512-256-128 channels for ngf=128). Adam(2e-4, beta1 0.5), N(0, 0.02) init.

DDP and BatchNorm: D sees pure batches (all real or all fake) in both steps and its BatchNorm keeps
no running statistics (it is never evaluated); G's running statistics are broadcast from rank 0
before each evaluation (common/tasks/gan.py explains both).

Data: data.name=fashion_mnist (28 px zero-padded to 32, then resized), cifar10, or folder with
data.root=DIR (ImageFolder/CelebA/an exported LSUN: every image under DIR, or DIR/train and
DIR/val; shorter side resized, center crop). val/fd is measured by a Fashion-MNIST classifier
(greyscale, 28x28): an absolute score on Fashion-MNIST, a relative progress signal elsewhere.
Result: val/fd 17.2 on real Fashion-MNIST after the default 3 epochs (32 px, 5x5, half-width nets),
11 min on a 2-core CPU shared with other jobs (README, "Generative recipes").

    python recipes/dcgan.py                                       # Fashion-MNIST, 32 px
    torchrun --nproc_per_node=4 recipes/dcgan.py data.name=cifar10 data.download=true
    python recipes/dcgan.py data.name=folder data.root=data/celeba model.image_size=64 model.g_width=128 model.d_width=128
    python recipes/dcgan.py --config recipes/configs/dcgan_debug.yaml          # seconds, synthetic data
"""
import math
from dataclasses import dataclass, field
from typing import Literal

import torch.nn as nn

from common.config import ranged
from common.data.gan_data import gan_data
from common.tasks import gan


@dataclass
class ModelConfig:
    image_size: Literal[32, 64] = 32  # generated image side in pixels; sets the number of layers
    kernel: Literal[4, 5] = 5  # kernel of every stride-2 (transposed) conv: 5 as in the paper, 4 as in most ports
    z_dim: int = ranged(100, ge=1)  # noise dimensions, z ~ U(-1, 1)
    g_width: int = ranged(64, ge=1)  # generator channels at the last stage (doubling towards 4x4)
    d_width: int = ranged(64, ge=1)  # discriminator channels at the first stage (doubling towards 4x4)


@dataclass
class Config(gan.GanConfig):
    model: ModelConfig = field(default_factory=ModelConfig)


def _stages(m: ModelConfig) -> int:
    return int(math.log2(m.image_size)) - 2  # 4x4 <-> image_size in stride-2 steps


def _pad(k: int) -> tuple[int, int]:
    return (k - 1) // 2, k % 2  # padding, output_padding: exactly doubles (halves) the side for k = 4 or 5


class Generator(nn.Module):
    def __init__(self, m: ModelConfig, channels: int):
        super().__init__()
        c = m.g_width * 2 ** (_stages(m) - 1)
        self.c = c
        self.project = nn.Linear(m.z_dim, c * 16, bias=False)  # "project and reshape" to 4x4
        layers = [nn.BatchNorm2d(c), nn.ReLU()]
        pad, out_pad = _pad(m.kernel)
        for i in range(_stages(m)):
            last = i == _stages(m) - 1
            c_out = channels if last else c // 2
            layers.append(nn.ConvTranspose2d(c, c_out, m.kernel, 2, pad, out_pad, bias=last))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(c_out), nn.ReLU()]
            c = c_out
        self.net = nn.Sequential(*layers)
        gan.init_dcgan(self)

    def forward(self, z):
        return self.net(self.project(z).view(z.shape[0], self.c, 4, 4))  # not len(z): it would fix the exported batch size


def build_discriminator(m: ModelConfig, channels: int) -> nn.Module:
    pad, _ = _pad(m.kernel)
    layers, c_in = [], channels
    for i in range(_stages(m)):
        c = m.d_width * 2 ** i
        layers.append(nn.Conv2d(c_in, c, m.kernel, 2, pad, bias=i == 0))
        if i > 0:  # no BatchNorm on the input layer (paper, section 3)
            layers.append(nn.BatchNorm2d(c, track_running_stats=False))
        layers.append(nn.LeakyReLU(0.2))
        c_in = c
    D = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * 16, 1))
    gan.init_dcgan(D)
    return D


def build_data(cfg: Config, rt):
    """Images in [-1, 1]; the eval split is the real reference set of val/fd."""
    return gan_data(cfg, rt, cfg.model.image_size, eval_limit=cfg.eval.samples)


def build_models(cfg: Config, loaders) -> dict:
    channels = loaders.shape[0]
    return {"G": Generator(cfg.model, channels), "D": build_discriminator(cfg.model, channels)}


def train_step(cfg, batch, state, rt) -> dict:
    real, D = batch[0], state.models["D"]
    z = gan.batch_noise(rt, len(real), (cfg.model.z_dim,), "uniform")  # this rank's rows of the global batch's noise
    with rt.autocast():
        fake = state.models["G"](z)  # one G forward; the D step sees it detached
        # Pure real and pure fake batches for D's BatchNorm; one backward, one D all-reduce.
        loss_d, probs = gan.d_loss(D(real), D(fake.detach()))
    rt.backward(loss_d)
    rt.step(state.optims["D"])
    loss_g = gan.g_step(rt, state, D, fake)  # through D frozen: no D gradients, no D all-reduce
    return {"loss_d": loss_d.detach(), "loss_g": loss_g, **probs}


task = gan.GanTask(Config, build_models, __file__, train_step=train_step, build_data=build_data)


if __name__ == "__main__":
    task.main()
