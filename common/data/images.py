"""Image data for the generative recipes, all scaled to [-1, 1] (the range of a tanh generator).

* In-memory datasets (MNIST, Fashion-MNIST, CIFAR, synthetic) reuse common/data/memory.py's device
  loaders; 28x28 images are zero-padded to 32 and then resized when a model wants 32/64 px.
* `data.name=folder`: image files under `data.root` (ImageFolder, CelebA, an exported LSUN,
  or pix2pix's side-by-side "AB" pairs), decoded by DataLoader workers. The sharding is the
  same arithmetic as the in-memory loader (TrainPlan, epoch_order, eval_shard), so batches,
  resume and evaluation behave identically for both.
* Pairs for pix2pix live in the channel dimension: x = cat([A, B], dim=1), so one crop/flip
  jitters both halves alike and every loader keeps its (images, labels) batches.
  In-memory datasets become an offline edges -> image task: A = edges(B).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from common import dist
from common.config import DataConfig
from common.data.memory import (DataError, Loaders, TensorEvalLoader, TensorTrainLoader, TrainPlan,
                         check_batch, epoch_order, eval_shard, load_split, tensor_loader_args)

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class ImageDataConfig(DataConfig):
    name: str = "fashion_mnist"  # mnist | fashion_mnist | cifar10 | cifar100 | synthetic | folder (image files under data.root)
    workers: int = 4  # data.name=folder: decoding worker processes per rank (0 = in the training process)
    direction: Literal["AtoB", "BtoA"] = "AtoB"  # pix2pix AB folders: AtoB = left half is the input, right half the target


# ----------------------------------------------------------------------------- in-memory

def fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> [N, C, size, size]: 28 px zero-padded to 32 (as the classifiers' pad_to),
    then an antialiased resize if the model wants another size."""
    if images.shape[-1] == size:
        return images
    if images.shape[-1] == 28 and size >= 32:
        images = F.pad(images, (2, 2, 2, 2))
    if images.shape[-1] != size:
        x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        images = x.round().clamp(0, 255).to(torch.uint8)
    return images


def edges(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> uint8 binary edge maps (Sobel magnitude of the grey image > 1/4 of full scale)."""
    x = images.float().mean(1, keepdim=True) / 255
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    mag = (gx.square() + gy.square()).sqrt() / 4  # a full-scale step gives 1
    return ((mag > 0.25).to(torch.uint8) * 255).expand_as(images).contiguous()


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
    """(A, B) pairs stacked as channels [A | B]: AB folders, or edges -> image from an in-memory dataset."""
    if cfg.data.name == "folder":
        return folder_data(cfg, rt, size, pairs=True, eval_limit=eval_limit)
    splits = []
    for split in ("train", "test"):
        x, y = load_split(cfg.data, split)
        x = fit_size(x, size)
        splits.append((torch.cat([edges(x), x], dim=1), y))
    return _memory_loaders(cfg, rt, *splits, eval_limit)


def head(loader, n: int) -> torch.Tensor:
    """The first n images of the eval split (global order, so the same on every rank and world size)."""
    if isinstance(loader, FolderEvalLoader):
        return loader.head(n)
    x = loader.images[:n].to(loader.device).float().div(255)
    return ((x - loader.mean) / loader.std).contiguous(memory_format=loader.memory_format)


# ----------------------------------------------------------------------------- folders

def list_images(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS)


def folder_splits(root: Path) -> tuple[Path, Path]:
    """root/train (else root) for training; root/val, root/test (else the training folder) for evaluation."""
    train = root / "train" if (root / "train").is_dir() else root
    held_out = next((root / s for s in ("val", "test") if (root / s).is_dir()), train)
    return train, held_out


class ImageFiles(torch.utils.data.Dataset):
    """Decodes one file per item into uint8 [C, size, size] (pairs: [A | B], 6 channels).

    Items are (file index, crop top, crop left, flip): the random parts are drawn by the
    sampler from (seed, epoch), so they do not depend on worker count or process.
    """

    def __init__(self, root: Path, files: list[str], size: int, pairs: bool, b_to_a: bool, load_size: int):
        self.root, self.files, self.size, self.pairs = root, files, size, pairs
        self.b_to_a, self.load_size = b_to_a, load_size
        self.labels = _folder_labels(files)

    def __len__(self) -> int:
        return len(self.files)

    def _square(self, img, side: int):
        """Resize (pairs: each half is squashed to a square as in pix2pix) or shorter side + center crop."""
        from PIL import Image
        if self.pairs:
            return img.resize((side, side), Image.BICUBIC)
        w, h = img.size
        scale = side / min(w, h)
        img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - side) // 2, (h - side) // 2
        return img.crop((left, top, left + side, top + side))

    def __getitem__(self, item):
        import numpy as np
        from PIL import Image
        i, top, left, flip = item
        with Image.open(self.root / self.files[i]) as f:
            img = f.convert("RGB")
        if self.pairs:
            w, h = img.size
            halves = [img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, w // 2 * 2, h))]
            parts = halves[::-1] if self.b_to_a else halves
        else:
            parts = [img]
        out = []
        for part in parts:
            arr = np.asarray(self._square(part, self.load_size), dtype=np.uint8)
            t = torch.from_numpy(arr.copy()).permute(2, 0, 1)[:, top:top + self.size, left:left + self.size]
            out.append(t.flip(2) if flip else t)
        return torch.cat(out), self.labels[i]


def _folder_labels(files: list[str]) -> list[int]:
    """Class = first sub-directory (ImageFolder layout); 0 for files at the top level."""
    classes = sorted({Path(f).parts[0] for f in files if len(Path(f).parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    return [index.get(Path(f).parts[0], 0) if len(Path(f).parts) > 1 else 0 for f in files]


class _Batches:
    """A batch sampler that asks its loader for the current epoch's batches each time it is iterated."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())

    def __len__(self) -> int:
        return len(self.make())


def _persistent_loader(ds, batches: _Batches, workers: int, rt):
    """One DataLoader for the whole run: worker processes start once (not every epoch or
    evaluation), and each pass re-reads the batch list, so set_epoch/resume still apply.

    Workers are spawned, not forked: by now the process has threads (process group, TensorBoard
    writer), and a fork can leave a child waiting forever on a lock one of them held (seen here:
    CPython's after-fork thread cleanup hung a worker under load).
    Its own generator: a DataLoader iterator otherwise draws its workers' base seed from the
    global RNG, shifting the training stream (dropout, noise) depending on when iterators are
    made, which breaks bitwise resume. The workers need no randomness of their own.
    """
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=workers,
                                       persistent_workers=workers > 0, pin_memory=rt.device.type == "cuda",
                                       multiprocessing_context="spawn" if workers > 0 else None,
                                       generator=torch.Generator().manual_seed(0))


def _to_device(x: torch.Tensor, rt) -> torch.Tensor:
    x = x.to(rt.device, non_blocking=True).float().div_(127.5).sub_(1)
    return x.contiguous(memory_format=rt.memory_format)


class FolderTrainLoader:
    """Same batches-per-rank contract as TensorTrainLoader, decoding files in worker processes.

    `data.augment`: pairs get pix2pix's jitter (resize to 286/256 of the size, random crop back,
    flip); single images a horizontal flip.
    """

    def __init__(self, dataset: ImageFiles, rt, *, global_batch, accum, seed, drop_last, augment, workers):
        check_batch(global_batch, rt.world_size, accum)
        self.ds, self.rt, self.accum, self.seed, self.augment, self.workers = dataset, rt, accum, seed, augment, workers
        self.plan = TrainPlan(len(dataset), global_batch, rt.world_size, drop_last)
        if self.plan.steps == 0:
            raise DataError(f"train.batch_size={global_batch} is larger than the {len(dataset)} training images")
        self.epoch, self.start_step = 0, 0
        self._loader = None

    def __len__(self) -> int:
        return self.plan.steps - self.start_step

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def _items(self) -> list[list[tuple]]:
        n, spare = self.plan.n, self.ds.load_size - self.ds.size
        order = epoch_order(n, self.seed, self.epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_777_777)
        crops = torch.randint(0, spare + 1, (n, 2), generator=g) if self.augment else torch.full((n, 2), spare // 2)
        flips = (torch.rand(n, generator=g) < 0.5) if self.augment else torch.zeros(n, dtype=torch.bool)
        batches = []
        for step in range(self.start_step, self.plan.steps):
            lo, hi = self.plan.shard(step, self.rt.rank)
            batches.append([(int(order[p % n]), int(crops[p % n, 0]), int(crops[p % n, 1]), bool(flips[p % n]))
                            for p in range(lo, hi)])
        return batches

    def __iter__(self):
        if self._loader is None:
            self._loader = _persistent_loader(self.ds, _Batches(self._items), self.workers, self.rt)
        for x, y in self._loader:
            x, y = _to_device(x, self.rt), y.to(self.rt.device)
            yield list(zip(x.tensor_split(self.accum), y.tensor_split(self.accum)))


class FolderEvalLoader:
    """Unpadded eval shard of the held-out files (each counted once), no jitter (dataset load_size == size)."""

    def __init__(self, dataset: ImageFiles, rt, *, batch_size: int, workers: int):
        self.ds, self.rt, self.workers = dataset, rt, workers
        self.total = len(dataset)
        self.idx = eval_shard(self.total, rt.world_size, rt.rank).tolist()
        self.batch = max(1, batch_size // rt.world_size)
        self._loader = None

    def __len__(self) -> int:
        return math.ceil(len(self.idx) / self.batch)

    def _items(self, idx: list[int]) -> list[list[tuple]]:
        return [[(i, 0, 0, False) for i in idx[s:s + self.batch]] for s in range(0, len(idx), self.batch)]

    def __iter__(self):
        if self._loader is None:
            self._loader = _persistent_loader(self.ds, _Batches(lambda: self._items(self.idx)), self.workers, self.rt)
        for x, y in self._loader:
            yield _to_device(x, self.rt), y.to(self.rt.device)

    def head(self, n: int) -> torch.Tensor:
        return _to_device(torch.stack([self.ds[(i, 0, 0, False)][0] for i in range(min(n, self.total))]), self.rt)


def folder_data(cfg, rt, size: int, pairs: bool, eval_limit: int = 0) -> Loaders:
    root = Path(cfg.data.root)
    train_dir, eval_dir = folder_splits(root)
    # Rank 0 lists the files once; every rank then indexes the same list.
    listing = dist.broadcast_object((list_images(train_dir), list_images(eval_dir)) if rt.is_main else None)
    train_files, eval_files = listing
    if not train_files:
        raise DataError(f"data.name=folder found no images ({', '.join(sorted(EXTENSIONS))}) under "
                        f"{train_dir.resolve()}: set data.root to the dataset directory")
    if eval_limit and len(eval_files) > eval_limit:  # an evenly spread, fixed subset
        step = len(eval_files) / eval_limit
        eval_files = [eval_files[int(i * step)] for i in range(eval_limit)]
    load = round(size * 286 / 256) if pairs and cfg.data.augment else size
    b_to_a = cfg.data.direction == "BtoA"
    train_ds = ImageFiles(train_dir, train_files, size, pairs, b_to_a, load)
    eval_ds = ImageFiles(eval_dir, eval_files, size, pairs, b_to_a, load_size=size)
    workers = cfg.data.workers
    train = FolderTrainLoader(train_ds, rt, global_batch=cfg.train.batch_size, accum=cfg.train.grad_accum,
                              seed=cfg.seed, drop_last=cfg.data.drop_last, augment=cfg.data.augment, workers=workers)
    evaluate = FolderEvalLoader(eval_ds, rt, batch_size=cfg.train.eval_batch_size, workers=workers)
    channels = 6 if pairs else 3
    return Loaders(train, evaluate, max(train_ds.labels) + 1, (channels, size, size))
