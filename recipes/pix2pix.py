"""pix2pix (Isola et al. 2017): image-to-image translation with a U-Net G and a 70x70 PatchGAN D.

G (U-Net): 4x4 stride-2 convs down to 1x1 (LeakyReLU 0.2, BatchNorm except on the first and the
   innermost layer), then ReLU + 4x4 stride-2 transposed convs back up (BatchNorm, dropout 0.5 on
   the 2x2, 4x4 and 8x8 decoder maps, tanh at the end), each decoder map concatenated with the
   encoder map of the same size. Channels 64-128-256-512-512... (C64 ... C512 of the paper).
D (PatchGAN): on cat(A, B): C64 (no BN) - C128 - C256 stride 2, C512 stride 1, a 1-channel conv;
   each output judges a 70x70 patch (model.d_layers=3; 1 -> 16x16, 2 -> 34x34).
Loss: G minimizes GAN + lambda * L1(G(A), B), lambda = 100; D's loss is halved (the mean over
the real and fake halves). Adam(2e-4, beta1 0.5). D sees pure batches (all real or all fake pairs)
and its BatchNorm keeps no running statistics; G's are broadcast from rank 0 before each
evaluation (common/tasks/gan.py). Evaluation runs G in eval mode (the paper keeps dropout and batch
statistics at test time): deterministic outputs, independent of how ranks split the batch.

Data: data.name=folder with data.root=DIR of side-by-side "AB" images (facades, maps,
edges2shoes: DIR/train, DIR/val or DIR/test; data.direction=BtoA for facades' labels -> photo);
or an in-memory dataset turned into an offline task, edges -> image (data.name=fashion_mnist:
A = binary Sobel edges of the 32 px item, B = the item). data.augment: pix2pix's jitter
(folders: resize to 286/256, random crop, flip; in memory: pad-4 crop + flip), same for A and B.
Quality at each evaluation on held-out pairs: val/l1 (mean |G(A) - B| in [0, 1] pixel units),
val/psnr (dB, per image, averaged), and val/fd on G(A) vs B when a judge classifier is set.
Result: edges -> clothes from real Fashion-MNIST, default YAML (32 px, half-width nets, 1 epoch, 8 min on
a 2-core CPU shared with other jobs): val/l1 0.058, val/psnr 19.2 dB, val/fd 2.39 (README, "Generative recipes").

    python recipes/pix2pix.py                                     # Fashion-MNIST edges -> clothes, 32 px
    python recipes/pix2pix.py data.name=folder data.root=data/facades data.direction=BtoA \
        model.image_size=256 train.batch_size=1 data.augment=true eval.classifier=none
    python recipes/pix2pix.py --config recipes/configs/pix2pix_debug.yaml        # seconds, synthetic data
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.config import CkptConfig, ConfigError, ranged
from common.data.gan_data import head, paired_data
from common.tasks import gan
from common.metrics.fid import frechet_distance
from common.train.log import Grid


@dataclass
class ModelConfig:
    image_size: int = ranged(32, ge=1)  # side of A and B in pixels, a power of two (256 in the paper); sets the U-Net depth
    g_width: int = ranged(64, ge=1)  # U-Net channels at the first layer (doubling to at most 8x)
    d_width: int = ranged(64, ge=1)  # PatchGAN channels at the first layer (doubling to at most 8x)
    d_layers: int = ranged(3, ge=1)  # PatchGAN stride-2 layers: 3 = 70x70 patches, 2 = 34x34, 1 = 16x16
    dropout: float = ranged(0.5, ge=0, lt=1)  # decoder dropout on the 2x2, 4x4 and 8x8 maps
    l1_weight: float = ranged(100.0, ge=0)  # lambda of the L1 term


@dataclass
class Config(gan.GanConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    eval: gan.GanEvalConfig = field(default_factory=lambda: gan.GanEvalConfig(grid=12))
    ckpt: CkptConfig = field(default_factory=lambda: CkptConfig(best_metric="val/l1", best_mode="min"))


class UNet(nn.Module):
    def __init__(self, m: ModelConfig, c_in: int, c_out: int):
        super().__init__()
        depth = int(math.log2(m.image_size))
        if 2 ** depth != m.image_size:
            raise ConfigError(f"model.image_size={m.image_size} must be a power of two for the U-Net (e.g. 64 or 256)")
        widths = [m.g_width * min(2 ** i, 8) for i in range(depth)]  # encoder maps: size/2, size/4, ..., 1
        self.down = nn.ModuleList([nn.Conv2d(c_in, widths[0], 4, 2, 1)])
        for i in range(1, depth):
            innermost = i == depth - 1
            self.down.append(nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(widths[i - 1], widths[i], 4, 2, 1, bias=innermost),
                                           *([] if innermost else [nn.BatchNorm2d(widths[i])])))
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):  # up-block producing the map the encoder had at level i - 1
            c_up_in = widths[i] if i == depth - 1 else 2 * widths[i]
            if i == 0:
                self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c_up_in, c_out, 4, 2, 1), nn.Tanh()))
                continue
            side = m.image_size >> i  # output side of this block
            drop = [nn.Dropout(m.dropout)] if side in (2, 4, 8) and m.dropout > 0 else []
            self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(c_up_in, widths[i - 1], 4, 2, 1, bias=False),
                                         nn.BatchNorm2d(widths[i - 1]), *drop))
        gan.init_dcgan(self)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = skips.pop()  # the 1x1 bottleneck
        for block in self.up[:-1]:
            x = torch.cat([block(x), skips.pop()], 1)
        return self.up[-1](x)


def build_patchgan(m: ModelConfig, c_in: int) -> nn.Module:
    layers, c = [nn.Conv2d(c_in, m.d_width, 4, 2, 1), nn.LeakyReLU(0.2)], m.d_width
    for n in range(1, m.d_layers + 1):
        c_next, stride = m.d_width * min(2 ** n, 8), 2 if n < m.d_layers else 1
        layers += [nn.Conv2d(c, c_next, 4, stride, 1, bias=False), nn.BatchNorm2d(c_next, track_running_stats=False),
                   nn.LeakyReLU(0.2)]
        c = c_next
    D = nn.Sequential(*layers, nn.Conv2d(c, 1, 4, 1, 1))
    gan.init_dcgan(D)
    return D


def build_data(cfg: Config, rt):
    """(A, B) pairs in [-1, 1] stacked as channels [A | B]; the eval split holds the held-out pairs."""
    return paired_data(cfg, rt, cfg.model.image_size, eval_limit=cfg.eval.samples)


def build_models(cfg: Config, loaders) -> dict:
    c = loaders.shape[0] // 2  # channels of A (= of B): pairs are stacked as [A | B]
    return {"G": UNet(cfg.model, c, c), "D": build_patchgan(cfg.model, 2 * c)}


def train_step(cfg, batch, state, rt) -> dict:
    pairs, _ = batch
    a, b = pairs.chunk(2, dim=1)
    G, D = state.models["G"], state.models["D"]
    with rt.autocast():
        fake = G(a)  # one G forward; the D step sees it detached
        # Pure real and pure fake batches for D's BatchNorm; one backward, one D all-reduce.
        loss_d, probs = gan.d_loss(D(pairs), D(torch.cat([a, fake.detach()], 1)))
    rt.backward(loss_d)
    rt.step(state.optims["D"])
    # G step through the frozen, unwrapped D: no D gradients, no D all-reduce.
    with rt.frozen(D) as D_, rt.autocast():
        loss_gan = gan.g_loss(D_(torch.cat([a, fake], 1)))
        loss_l1 = F.l1_loss(fake.float(), b.float())
        loss_g = loss_gan + cfg.model.l1_weight * loss_l1
    rt.backward(loss_g)
    rt.step(state.optims["G"])
    return {"loss_d": loss_d.detach(), "loss_g": loss_gan.detach(), "l1": loss_l1.detach(), **probs}


@torch.no_grad()
def evaluate(cfg, state, rt, loader, judge) -> dict:
    G = state.eval_model("G")
    gan.sync_buffers(rt, state.models["G"], G)  # rank 0's BatchNorm statistics, as DDP would use next
    sums = torch.zeros(3, dtype=torch.float64, device=rt.device)  # L1, PSNR, count
    fakes = judge.stats() if judge else None
    with gan.evaluating(G):
        for pairs, _ in loader:
            a, b = pairs.chunk(2, dim=1)
            out = G(a)
            err = (out.float() - b.float()).flatten(1) / 2  # [0, 1] pixel units
            sums[0] += err.abs().mean(1).sum()
            sums[1] += (-10 * torch.log10(err.square().mean(1).clamp(min=1e-10))).sum()  # peak 1
            sums[2] += len(pairs)
            if fakes is not None:
                fakes.add(out)
        triplets = head(loader, cfg.eval.grid)
        a, b = triplets.chunk(2, dim=1)
        grid = Grid(torch.stack([a, G(a), b], 1).flatten(0, 1), nrow=12)  # input | output | target
    l1, psnr, count = rt.all_reduce_sum(sums).tolist()
    if int(count) != loader.total:
        raise RuntimeError(f"evaluation saw {int(count)} pairs, the split has {loader.total}: sharding bug")
    out = {"l1": l1 / count, "psnr": psnr / count, "input_output_target": grid}
    if fakes is not None:
        real = judge.reference(rt, ((p.chunk(2, dim=1)[1], None) for p, _ in loader), loader.total)
        out["fd"] = frechet_distance(real, fakes.reduce(rt))
    return out


def inputs(cfg, batch) -> dict:
    """G's input for --export: the A images of held-out pairs."""
    return {"images": batch[0].chunk(2, dim=1)[0]}


task = gan.GanTask(Config, build_models, __file__, train_step=train_step, evaluate=evaluate,
                   build_data=build_data, metrics={"val/l1": "min", "val/psnr": "max"}, inputs=inputs)


if __name__ == "__main__":
    task.main()
