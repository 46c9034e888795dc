"""Fréchet distance on the features of our own Fashion-MNIST classifier (the "judge").

FID compares Gaussians fitted to Inception features of real and generated images; here the
features are the input of the last Linear layer of a classifier this project trains with
`recipes/mnist_cnn.py` (eval.classifier=auto: on first use, common/tasks/judge.py), so figures
compare between runs of this project, not with published FIDs.
The judge also scores a conditional generator's label accuracy. Distributed: each rank sums
features, outer products and counts in float64 over its unpadded shard; one all-reduce adds them.
How to train the judge: docs/generative.md.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.formats.checkpoint import load_file
from common.train.checkpoint import Checkpointer
from common.config import UserError
from common.models.cnn import CNNConfig, small_cnn
from common.data.datasets import STATS

HOW_TO_MAKE = "python recipes/mnist_cnn.py out_dir=runs/fid_classifier train.epochs=5"


@dataclass
class Gaussian:
    """Mean and covariance of a feature set, plus classifier accuracy where labels were given."""
    mean: torch.Tensor  # [D] float64
    cov: torch.Tensor  # [D, D] float64
    count: int
    acc: float | None = None  # percent of samples whose argmax equals the given label


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)).

    Tr((C_a C_b)^(1/2)) = sum of sqrt(eigenvalues of C_a^(1/2) C_b C_a^(1/2)), a symmetric
    PSD matrix: eigh is stable where a general matrix square root is not.
    """
    w, v = torch.linalg.eigh(a.cov)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    middle = root_a @ b.cov @ root_a
    tr_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (a.mean - b.mean).square().sum() + a.cov.trace() + b.cov.trace() - 2 * tr_root
    return max(float(value), 0.0)


class FeatureStats:
    """Running sums of features (and label hits) on this rank; reduce() is a collective."""

    def __init__(self, judge: "Judge"):
        self.judge = judge
        d = judge.dim
        self.sum = torch.zeros(d, dtype=torch.float64, device=judge.device)
        self.outer = torch.zeros(d, d, dtype=torch.float64, device=judge.device)
        self.counts = torch.zeros(3, dtype=torch.float64, device=judge.device)  # n, labelled n, correct

    @torch.no_grad()
    def add(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """images: [N, C, H, W] in [-1, 1]; labels: the class each image should show."""
        feats, logits = self.judge(images)
        f = feats.double()
        self.sum += f.sum(0)
        self.outer += f.T @ f
        self.counts[0] += len(f)
        if labels is not None:
            self.counts[1] += len(labels)
            self.counts[2] += (logits.argmax(1) == labels).sum()

    def reduce(self, rt) -> Gaussian:
        flat = rt.all_reduce_sum(torch.cat([self.sum, self.outer.flatten(), self.counts]))
        d = len(self.sum)
        total, outer, (n, labelled, correct) = flat[:d], flat[d:d + d * d].view(d, d), flat[-3:].tolist()
        if n < 2:
            raise RuntimeError(f"a Fréchet distance needs at least 2 samples, got {int(n)}")
        mean = total / n
        cov = (outer - n * torch.outer(mean, mean)) / (n - 1)
        return Gaussian(mean, cov, int(n), 100.0 * correct / labelled if labelled else None)


class Judge(nn.Module):
    """A trained small CNN (common/models/cnn.py), frozen, mapping [-1, 1] images to (features, logits)."""

    def __init__(self, net: nn.Sequential, in_shape: tuple[int, int, int], mean, std, source: str):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.in_shape, self.source = in_shape, source
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.dim = net[-1].in_features
        self._reference: Gaussian | None = None

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images of any size/channels -> the classifier's normalized input.

        Colour becomes grey. 28x28 classifiers see 32x32 images center-cropped to 28, the
        inverse of the zero padding that puts 28x28 data into 32/64-pixel generators; other
        sizes are resized (antialiased) to 32 first.
        """
        c, h, w = self.in_shape
        x = x.float()
        if x.shape[1] != c:
            x = x.mean(1, keepdim=True).expand(-1, c, -1, -1)
        if x.shape[-2:] != (h, w):
            size = 32 if (h, w) == (28, 28) else h
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            top, left = (size - h) // 2, (size - w) // 2
            x = x[..., top:top + h, left:left + w]
        return ((x + 1) / 2 - self.mean) / self.std

    @torch.no_grad()
    def forward(self, x: torch.Tensor):
        feats = self.net[:-1](self.prepare(x))
        return feats, self.net[-1](feats)

    def stats(self) -> FeatureStats:
        return FeatureStats(self)

    def reference(self, rt, batches, expected: int) -> Gaussian:
        """Statistics of the real images, computed once per run on the first evaluation.

        `batches` yields (images in [-1, 1], labels or None) of this rank's eval shard; together
        the ranks must see `expected` images, each once.
        """
        if self._reference is None:
            acc = self.stats()
            for images, labels in batches:
                acc.add(images, labels)
            self._reference = acc.reduce(rt)
            if self._reference.count != expected:
                raise RuntimeError(f"the reference set has {self._reference.count} images, expected {expected}: "
                                   "sharding bug")
        return self._reference


def find_checkpoint(path: Path) -> Path:
    """A checkpoint directory, a state.pt, or a run directory (its best, else newest valid checkpoint)."""
    if (path / "state.pt").is_file() or path.is_file():
        return path
    ckpts = Checkpointer(path / "checkpoints")
    best = ckpts.best_name()
    if best and (ckpts.dir / best).is_dir():
        return ckpts.dir / best
    found = ckpts.latest_valid()
    if found is None:
        raise UserError(f"eval.classifier={str(path)!r} holds no classifier checkpoint. Make one (minutes on a CPU, "
                        f"offline): `{HOW_TO_MAKE}`, then point eval.classifier at that out_dir; or set "
                        "eval.classifier=auto (trained on first use and cached), or eval.classifier=none to train "
                        "without Fréchet distance and label accuracy")
    return found


def load_judge(path: str, device) -> Judge | None:
    """The judge from an mnist_cnn run directory or checkpoint; None when path is 'none' (or empty)."""
    if path in ("", "none"):
        return None
    ckpt = find_checkpoint(Path(path))
    sd = load_file(ckpt)
    data, model = sd["config"]["data"], sd["config"].get("model", {})
    if "net" not in sd.get("models", {}) or set(model) != {f.name for f in fields(CNNConfig)}:
        raise UserError(f"eval.classifier={path!r} is a '{sd.get('recipe')}' checkpoint; the Fréchet distance "
                        f"needs the small CNN of common/models/cnn.py: `{HOW_TO_MAKE}`")
    if data["name"] == "synthetic":
        in_shape = tuple(data["synthetic_shape"])
    else:
        side = max(28, data.get("pad_to", 0))
        in_shape = (1, side, side)
    weights = sd["models"]["net"]
    last = max(int(k.split(".")[0]) for k in weights)  # index of the final Linear in the Sequential
    net = small_cnn(CNNConfig(**model), in_shape, num_classes=weights[f"{last}.weight"].shape[0])
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        raise UserError(f"eval.classifier={path!r} does not fit the CNN of common/models/cnn.py "
                        f"({str(e).splitlines()[0]}); retrain it: `{HOW_TO_MAKE}`") from None
    mean, std = STATS[data["name"]]
    return Judge(net, in_shape, mean, std, f"{ckpt} (step {sd['step']})").to(device)
