"""Pieces every GAN recipe shares: losses, evaluation settings, fixed noise, quality scores, grids.

The training step itself stays in each recipe, visible top to bottom:

    fake = G(z)                                     # one G forward (through DDP) per iteration
    D step:  loss_d = d_loss(D(real), D(fake.detach()))   -> rt.backward, rt.step(opt D)
    G step:  with rt.frozen(D) as D_: loss_g = g_loss(D_(fake)) -> rt.backward, rt.step(opt G)

D sees pure batches (all real or all fake) and keeps no BatchNorm running statistics; G's are
broadcast from rank 0 before every evaluation. Why: docs/generative.md#how-the-two-network-step-is-distributed.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed
import torch.nn as nn
import torch.nn.functional as F

from common.config import BaseConfig, CkptConfig, OptimConfig, ranged, seed_bits
from common.fields import APPLIED, setting
from common.data.gan_data import ImageDataConfig, gan_data
from common.data.sampling import eval_shard
from common.models.size import within_memory
from common.entry import Task
from common.metrics.fid import frechet_distance, load_judge
from common.tasks.judge import auto_judge
from common.train.log import Grid


@dataclass
class GanEvalConfig:
    classifier: str = "auto"  # judge of val/fd: auto (trained on first use, cached), an mnist_cnn run dir, none
    samples: int = ranged(10000, ge=1)  # generated samples per evaluation (and cap on the real reference set) for val/fd
    grid: int = ranged(64, ge=1)  # images in the sample grid written to TensorBoard and out_dir/samples/ at each evaluation


@dataclass
class GanConfig(BaseConfig):
    """What every GAN recipe shares: image data, evaluation, Adam(2e-4, beta1 0.5) at a constant
    LR (Radford et al. 2016), and the best checkpoint by the lowest Fréchet distance."""
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    eval: GanEvalConfig = setting(factory=GanEvalConfig, evaluate=APPLIED)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=2e-4, betas=[0.5, 0.999],
                                                                   schedule="constant"))
    ckpt: CkptConfig = field(default_factory=lambda: CkptConfig(best_metric="val/fd", best_mode="min"))


METRICS = {"val/fd": "min", "val/label_acc": "max"}  # quality()'s (label_acc for conditional generators)


def GanTask(Config: type, build_models, script: str, *, train_step, evaluate=None, build_data=None,
            metrics=METRICS, inputs=None) -> Task:
    """A GAN recipe's Task: models G and D from build_models(cfg, loaders) -> {"G", "D"}, one optimizer
    each, an EMA of G (exported). The recipe gives its train_step(cfg, batch, state, rt) (D step, then the
    frozen-D G step) and, where they differ from an unconditional GAN's, evaluate(cfg, state, rt, loader,
    judge) (judge: the FD classifier of eval.classifier, or None) and build_data(cfg, rt) (a GAN's
    checkpoint saves no classes or stats, so `saved` is empty), the metrics that evaluate logs, and
    G's inputs for --export (default: evaluation's noise ~ U(-1, 1) of model.z_dim, noise_inputs)."""
    evaluate, build_data = evaluate or evaluate_from_noise, build_data or images_for_fd
    judge = None  # this run's, loaded with its data

    def data(cfg, rt, **saved):
        nonlocal judge
        # The judge first (auto: trained here on first use): a missing one stops the run before any data is read.
        where = auto_judge(rt) if cfg.eval.classifier == "auto" else cfg.eval.classifier
        judge = load_judge(where, rt.device)
        return build_data(cfg, rt, **saved)

    def judged(cfg, state, rt, loader) -> dict:
        return evaluate(cfg, state, rt, loader, judge)

    return Task(Config, script, data, within_memory(build_models), train_step, judged, ema=("G",), exported="G",
                metrics=metrics, inputs=inputs or noise_inputs("uniform"))


def noise_inputs(kind: str, labels: bool = False):
    """Task.inputs of a generator of noise (and of labels: the eval batch's real ones): evaluation's
    fixed noise bank, one vector per row of the eval batch."""
    def inputs(cfg, batch) -> dict:
        real, y = batch
        z = {"z": noise_bank(len(real), (cfg.model.z_dim,), kind, cfg.seed, "cpu")}
        return {**z, "labels": y} if labels else z
    return inputs


def images_for_fd(cfg, rt):
    """Images in [-1, 1] as stored; the eval split (capped at eval.samples) is the real reference set of val/fd."""
    return gan_data(cfg, rt, eval_limit=cfg.eval.samples)


# ----------------------------------------------------------------------------- losses

def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """BCE-with-logits (autocast-safe): real -> 1, fake -> 0, averaged over both halves (the
    pix2pix paper's halved D loss). Also D's mean belief on each half, for the logs."""
    loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) +
            F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))) / 2
    return loss, {"d_real": torch.sigmoid(real_logits.detach().float()).mean(),
                  "d_fake": torch.sigmoid(fake_logits.detach().float()).mean()}


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss, -log D(G(z)) (Goodfellow et al. 2014, section 3)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def g_step(rt, state, D, *d_inputs) -> torch.Tensor:
    """The G step with the non-saturating loss, through D frozen and unwrapped: no D gradients
    and no D all-reduce. Returns the detached G loss."""
    with rt.frozen(D) as D_, rt.autocast():
        loss_g = g_loss(D_(*d_inputs))
    rt.backward(loss_g)
    rt.step(state.optims["G"])
    return loss_g.detach()


# ----------------------------------------------------------------------------- models

def init_dcgan(module: nn.Module) -> None:
    """Weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02), biases 0 (Radford et al. 2016, section 4)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@contextlib.contextmanager
def evaluating(*models: nn.Module):
    """eval() mode (dropout off, BatchNorm on running statistics: samples do not depend on how
    the eval batch is split across ranks), restored afterwards."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def sync_buffers(rt, *models: nn.Module) -> None:
    """Broadcast buffers (BatchNorm running statistics) from rank 0; a collective, call on every rank."""
    if rt.world_size == 1:
        return
    unique = {id(b): b for m in models for b in m.buffers()}
    for b in unique.values():
        torch.distributed.broadcast(b, src=0)


# ----------------------------------------------------------------------------- evaluation

def noise(shape: tuple[int, ...], kind: str, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ U(-1, 1) ("uniform"), U(0, 1) ("uniform01") or N(0, 1) ("normal"). Without a generator
    it draws from the device's global RNG (saved in checkpoints); with one, on the CPU."""
    where = "cpu" if generator is not None else device
    if kind == "normal":
        z = torch.randn(shape, generator=generator, device=where)
    else:
        z = torch.rand(shape, generator=generator, device=where)
        z = z * 2 - 1 if kind == "uniform" else z
    return z.to(device)


def batch_noise(rt, n: int, shape: tuple[int, ...], kind: str) -> torch.Tensor:
    """Training noise for this rank's n samples, cut from one draw for the whole global batch.

    Every rank seeds and draws alike, so each draws the same [world * n, ...] tensor and keeps
    its own rows, as the data sampler does: ranks get different fakes (drawing n each would give
    every rank the same ones), and N ranks of n see the samples of one process of N * n.
    """
    z = noise((rt.world_size * n, *shape), kind, rt.device)
    return z[rt.rank * n:(rt.rank + 1) * n]


def noise_bank(n: int, shape: tuple[int, ...], kind: str, seed: int, device) -> torch.Tensor:
    """n fixed noise vectors from a private generator: the same samples at every evaluation, on
    every rank and world size, and the training RNG stream is untouched (exact resume)."""
    return noise((n, *shape), kind, device, torch.Generator().manual_seed(seed_bits(seed + 20_240_601)))


@torch.no_grad()
def quality(cfg, rt, judge, loader, generate, real_labels: bool = False) -> dict[str, float]:
    """Fréchet distance of eval.samples generated samples to the real images of the eval loader, in the
    judge's features.

    generate(indices) -> (images in [-1, 1], requested labels or None) for global sample indices;
    each rank generates its unpadded shard of range(eval.samples), train.eval_batch_size at a time. With requested labels, also `label_acc`:
    percent of samples the judge classifies as the class they were asked to show (and with
    real_labels, `real_label_acc`: the judge on the real eval images, the ceiling).
    """
    if judge is None:
        return {}
    reference = judge.reference(rt, ((x, y if real_labels else None) for x, y in loader), loader.total)
    fake = judge.stats()
    n, batch = cfg.eval.samples, max(1, cfg.train.eval_batch_size // rt.world_size)
    for idx in eval_shard(n, rt.world_size, rt.rank).split(batch):
        images, labels = generate(idx.to(rt.device))
        fake.add(images, labels)
    scored = fake.reduce(rt)
    if scored.count != n:
        raise RuntimeError(f"scored {scored.count} generated samples, expected {n}: sharding bug")
    out = {"fd": frechet_distance(reference, scored)}
    if scored.acc is not None:
        out["label_acc"] = scored.acc
    if scored.acc is not None and reference.acc is not None:
        out["real_label_acc"] = reference.acc  # the judge on real images: the ceiling for label_acc
    return out


@torch.no_grad()
def evaluate_from_noise(cfg, state, rt, loader, judge) -> dict:
    """An unconditional G (z ~ U(-1, 1)) on a fixed noise bank: val/fd against the real eval
    images, and the first eval.grid samples as a grid."""
    G = state.eval_model("G")
    sync_buffers(rt, state.models["G"], G)  # rank 0's BatchNorm statistics, as DDP would use next
    z = noise_bank(max(cfg.eval.samples, cfg.eval.grid), (cfg.model.z_dim,), "uniform", cfg.seed, rt.device)
    with evaluating(G):
        grid = Grid(G(z[:cfg.eval.grid]))
        return {**quality(cfg, rt, judge, loader, lambda idx: (G(z[idx]), None)), "fixed_noise": grid}
