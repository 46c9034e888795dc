"""Image data for the generative recipes, all scaled to [-1, 1] (the range of a tanh generator).

* In-memory datasets (MNIST, Fashion-MNIST, CIFAR, synthetic) reuse common/data/classifier_data.py's device
  loaders; 28x28 images are zero-padded to 32 and then resized when a model wants 32/64 px.
* `data.name=folder`: image files under `data.root` (ImageFolder, CelebA, an exported LSUN,
  or pix2pix's side-by-side "AB" pairs) go to common/data/folder.py's loaders (folder_data),
  the project's one disk loader, with the same batches/resume/evaluation contract.
* Pairs for pix2pix live in the channel dimension: x = cat([A, B], dim=1), so one crop/flip
  jitters both halves alike and every loader keeps its (images, labels) batches.
  In-memory datasets become an offline edges -> image task: A = edges(B).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

from common.config import DataConfig, ranged
from common.fields import APPLIED, Fixed, setting
from common.data.folder import folder_data
from common.data.datasets import load_split
from common.data.classifier_data import Loaders, TensorEvalLoader, TensorTrainLoader, tensor_loader_args
from common.data.streaming import FolderEvalLoader


@dataclass
class ImageDataConfig(DataConfig):
    name: str = "fashion_mnist"  # mnist | fashion_mnist | cifar10 | cifar100 | synthetic | folder (image files under data.root)
    workers: int = ranged(4, ge=0, evaluate=APPLIED, read_when="data.name=folder")  # data.name=folder: decoding worker processes per rank (0 = in the training process)
    direction: Literal["AtoB", "BtoA"] = setting("AtoB", read_when="data.name=folder", resume=Fixed("which image is the input and which the target"))  # pix2pix AB folders: AtoB = left half is the input, right half the target


def fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> [N, C, size, size]: 28 px zero-padded to 32 (as the classifiers' pad_to),
    then an antialiased resize if the model wants another size."""
    if images.shape[-1] == size:
        return images
    if images.shape[-1] == 28 and size >= 32:
        images = F.pad(images, (2, 2, 2, 2))
    if images.shape[-1] != size:  # in chunks: a float copy of a whole 60k-image set at 256 px is 15 GiB
        images = torch.cat([F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
                            for chunk in images.split(1024)])
    return images


def edges(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> uint8 binary edge maps (Sobel magnitude of the grey image > 1/4 of full scale).
    In chunks, like fit_size: the float temporaries of a whole dataset would not fit in memory."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)

    def chunk_edges(chunk):
        x = F.pad(chunk.float().mean(1, keepdim=True) / 255, (1, 1, 1, 1), mode="replicate")
        mag = (F.conv2d(x, kx).square() + F.conv2d(x, kx.transpose(2, 3)).square()).sqrt() / 4  # full-scale step: 1
        return (mag > 0.25).to(torch.uint8) * 255
    return torch.cat([chunk_edges(c) for c in images.split(1024)]).expand_as(images).contiguous()


def _tanh_stats(channels: int):
    return [0.5] * channels, [0.5] * channels  # (x/255 - 0.5) / 0.5 maps [0, 255] to [-1, 1]


def _memory_loaders(cfg, rt, train, test, eval_limit: int) -> Loaders:
    (train_x, train_y), (test_x, test_y) = train, test
    mean, std = _tanh_stats(train_x.shape[1])
    if eval_limit and len(test_y) > eval_limit:
        test_x, test_y = test_x[:eval_limit], test_y[:eval_limit]
    common = tensor_loader_args(cfg, rt, train_x, train_y, test_x, test_y)
    loader = TensorTrainLoader(train_x, train_y, mean, std, global_batch=cfg.train.batch_size,
                               accum=cfg.train.grad_accum, seed=cfg.seed, drop_last=cfg.data.drop_last,
                               augment=cfg.data.augment, **common)
    evaluate = TensorEvalLoader(test_x, test_y, mean, std, batch_size=cfg.train.eval_batch_size, **common)
    return Loaders(loader, evaluate, int(max(train_y.max(), test_y.max())) + 1, tuple(train_x.shape[1:]))


def gan_data(cfg, rt, size: int | None = None, eval_limit: int = 0) -> Loaders:
    """Train/eval loaders of single images in [-1, 1], `size` px square (None: as stored).

    eval_limit > 0 caps the eval split (the real reference set of the Fréchet distance).
    """
    if cfg.data.name == "folder":
        return folder_data(cfg, rt, size, pairs=False, eval_limit=eval_limit)
    splits = [load_split(cfg.data, s) for s in ("train", "test")]
    if size:
        splits = [(fit_size(x, size), y) for x, y in splits]
    return _memory_loaders(cfg, rt, *splits, eval_limit)


def paired_data(cfg, rt, size: int, eval_limit: int = 0) -> Loaders:
    """(A, B) pairs stacked as channels [A | B]: AB folders, or edges -> image from an in-memory dataset.
    Pairs have no classes (num_classes 0), whatever labels the files or the dataset carry."""
    if cfg.data.name == "folder":
        return replace(folder_data(cfg, rt, size, pairs=True, eval_limit=eval_limit), num_classes=0)
    splits = []
    for split in ("train", "test"):
        x, y = load_split(cfg.data, split)
        x = fit_size(x, size)
        splits.append((torch.cat([edges(x), x], dim=1), y))
    return replace(_memory_loaders(cfg, rt, *splits, eval_limit), num_classes=0)


def head(loader, n: int) -> torch.Tensor:
    """The first n images of the eval split (global order, so the same on every rank and world size)."""
    if isinstance(loader, FolderEvalLoader):
        return loader.head(n)
    x = loader.images[:n].to(loader.device).float().div(255)
    return ((x - loader.mean) / loader.std).contiguous(memory_format=loader.memory_format)
