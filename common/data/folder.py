"""Image files on disk through DataLoader workers: the project's one folder loader.

Owns listing a tree (rank 0 lists, all ranks index its list), decoding (a failure is a DataError
naming the file), the two transforms (torchvision's classification presets for imagefolder_data /
recipes/imagenet.py; the GANs' uint8 square or A|B crop for folder_data / common/data/gan_data.py),
and one train and one eval loader with classifier_data.py's contract: per step a list of grad_accum
micro-batches on the device, TrainPlan shards, order from (seed, epoch), resume by step index
(set_epoch(epoch, start_step)), unpadded eval shards with `.total`. Per-sample randomness (crop and
flip, or a seed for the torchvision transform) is handed out by the sampler from
augment_generator(seed, epoch) by epoch position: independent of workers, world size and resume,
and the training process's global RNG is never touched (data.workers=0 included).
About 330 lines: the classification and GAN folder sources share every part below but their
transforms, and keeping them in one module is what stops the two from drifting apart again.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common import dist
from common.config import DATASET, ranged
from common.fields import APPLIED, IGNORED, setting
from common.data.datasets import DataError, synthetic_tree
from common.data.files import (EXTENSIONS, SAVED_CLASSES, absent_classes, class_labels, class_names, decode,
                               labels_by_name, list_images)
from common.data.classifier_data import Loaders
from common.data.sampling import TrainPlan, augment_generator, check_batch, epoch_order, eval_shard

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ----------------------------------------------------------------------------- files

def _listing(rt, dirs: list[Path]) -> list[list[str]]:
    """Rank 0 walks the tree once (slow on network filesystems); the others get its listing."""
    listing = None
    if rt.is_main:
        try:
            listing = [list_images(d) for d in dirs]
        except OSError as e:
            listing = f"cannot read the image folders under {dirs[0].parent.resolve()}: {e}"
        except DataError as e:  # every rank raises it, not rank 0 alone
            listing = str(e)
    listing = dist.broadcast_object(listing)
    if isinstance(listing, str):
        raise DataError(listing)
    return listing


# ----------------------------------------------------------------------------- transforms

class Seeded:
    """A per-sample function whose randomness comes from the sampler: a seed per training sample, drawn
    by epoch position from augment_generator(seed, epoch) (None for evaluation). It runs under fork_rng,
    so a sample gets the same augmentation whatever the workers, world size or resume, and the
    caller's RNG is untouched."""

    def __init__(self, fn, train: bool):
        self.fn, self.train = fn, train

    def draw(self, n: int, g: torch.Generator) -> list:
        return torch.randint(0, 2**62, (n,), generator=g).tolist() if self.train else [None] * n

    def __call__(self, x, seed):
        if seed is None:
            return self.fn(x)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.fn(x)

    @staticmethod
    def on_device(x: torch.Tensor) -> torch.Tensor:
        return x


def presets(size: int, train: bool) -> Seeded:
    """torchvision's reference presets: RandomResizedCrop + flip; eval resize to size/0.875, center crop."""
    from torchvision.transforms import v2
    head = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] if train else \
        [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    return Seeded(v2.Compose([v2.ToImage(), *head, v2.ToDtype(torch.float32, scale=True),
                              v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]), train)


class SquareCrop:
    """uint8 [C, size, size] for the GANs, scaled to [-1, 1] on the device.

    Single images: shorter side resized to load_size, center crop. AB pairs (pix2pix): the halves
    are squashed to load_size squares and stacked as channels [A | B], so one crop/flip jitters
    both alike. Parameters (top, left, flip): random with augment (pix2pix's jitter when
    load_size > size), else None = center crop, no flip.
    """

    def __init__(self, size: int, load_size: int, pairs: bool = False, b_to_a: bool = False, augment: bool = False):
        self.size, self.load_size, self.pairs, self.b_to_a, self.augment = size, load_size, pairs, b_to_a, augment

    def draw(self, n: int, g: torch.Generator) -> list:
        if not self.augment:
            return [None] * n
        crops = torch.randint(0, self.load_size - self.size + 1, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        return list(zip(crops[:, 0].tolist(), crops[:, 1].tolist(), flips.tolist()))

    def _square(self, img):
        from PIL import Image
        side = self.load_size
        if self.pairs:
            return img.resize((side, side), Image.BICUBIC)
        w, h = img.size
        scale = side / min(w, h)
        img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - side) // 2, (h - side) // 2
        return img.crop((left, top, left + side, top + side))

    def __call__(self, img, params):
        import numpy as np
        spare = self.load_size - self.size
        top, left, flip = params if params is not None else (spare // 2, spare // 2, False)
        parts = [img]
        if self.pairs:
            w, h = img.size
            parts = [img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, w // 2 * 2, h))]
            parts = parts[::-1] if self.b_to_a else parts
        out = []
        for part in parts:
            t = torch.from_numpy(np.asarray(self._square(part), dtype=np.uint8).copy()).permute(2, 0, 1)
            t = t[:, top:top + self.size, left:left + self.size]
            out.append(t.flip(2) if flip else t)
        return torch.cat(out)

    @staticmethod
    def on_device(x: torch.Tensor) -> torch.Tensor:
        return x.float().div_(127.5).sub_(1)


# ----------------------------------------------------------------------------- dataset, sampler, loaders

class ImageFiles(Dataset):
    """Files under root with labels; item (index, params) -> (transform(image, params), label)."""

    def __init__(self, root: Path, files: list[str], labels: list[int], transform):
        self.root, self.files, self.labels, self.transform = Path(root), files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item):
        i, params = item
        return self.transform(decode(self.root / self.files[i]), params), self.labels[i]


class EpochBatches(Sampler):
    """This rank's [(index, params)] per step of the epoch set by set_epoch, for DataLoader(batch_sampler=...)."""

    def __init__(self, plan: TrainPlan, rank: int, seed: int, draw):
        self.plan, self.rank, self.seed, self.draw = plan, rank, seed, draw
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.plan.steps - self.start_step

    def __iter__(self):
        n = self.plan.n
        order = epoch_order(n, self.seed, self.epoch).tolist()
        params = self.draw(n, augment_generator(self.seed, self.epoch))  # by epoch position
        for step in range(self.start_step, self.plan.steps):
            lo, hi = self.plan.shard(step, self.rank)
            yield [(order[p % n], params[p % n]) for p in range(lo, hi)]


def _ignore_ctrl_c(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal's group: the workers leave it to the training
    process, which checkpoints and then shuts them down (common/train/preempt.py)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _loader(ds: ImageFiles, batches, workers: int, rt, prefetch: int = 4) -> DataLoader:
    """One DataLoader per run: persistent workers (warm file caches); each pass re-reads the sampler.

    Spawned, not forked: the process has threads by now (process group, TensorBoard writer), and a
    forked child can wait forever on a lock one of them held. Its own generator: an iterator
    otherwise draws a base seed from the global RNG, shifting the training stream (dropout,
    noise) and breaking bitwise resume; workers need no randomness of their own. Pinned host
    memory lets the copy to the GPU overlap compute.
    """
    return DataLoader(ds, batch_sampler=batches, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=rt.device.type == "cuda", multiprocessing_context="spawn" if workers > 0 else None,
                      prefetch_factor=prefetch if workers > 0 else None, generator=torch.Generator().manual_seed(0),
                      worker_init_fn=_ignore_ctrl_c if workers > 0 else None)


def _to_device(ds: ImageFiles, x: torch.Tensor, rt) -> torch.Tensor:
    x = ds.transform.on_device(x.to(rt.device, non_blocking=True))
    return x.contiguous(memory_format=rt.memory_format)


class FolderTrainLoader:
    """Yields per step a list of grad_accum micro-batches already on the device (TensorTrainLoader's contract)."""

    def __init__(self, dataset: ImageFiles, rt, *, global_batch: int, accum: int, seed: int, drop_last: bool,
                 workers: int, prefetch: int = 4):
        check_batch(global_batch, rt.world_size, accum)
        self.plan = TrainPlan(len(dataset), global_batch, rt.world_size, drop_last)
        if self.plan.steps == 0:
            raise DataError(f"train.batch_size={global_batch} is larger than the {len(dataset)} training images")
        self.ds, self.rt, self.accum = dataset, rt, accum
        self.sampler = EpochBatches(self.plan, rt.rank, seed, dataset.transform.draw)
        self.loader = _loader(dataset, self.sampler, workers, rt, prefetch)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_step)

    def __iter__(self):
        for x, y in self.loader:
            x, y = _to_device(self.ds, x, self.rt), y.to(self.rt.device, non_blocking=True)
            yield list(zip(x.tensor_split(self.accum), y.tensor_split(self.accum)))


class FolderEvalLoader:
    """Unpadded eval shard: every file of the split is evaluated exactly once over all ranks."""

    def __init__(self, dataset: ImageFiles, rt, *, batch_size: int, workers: int):
        idx = eval_shard(len(dataset), rt.world_size, rt.rank).tolist()
        per_rank = max(1, batch_size // rt.world_size)
        self.batches = [[(i, None) for i in idx[s:s + per_rank]] for s in range(0, len(idx), per_rank)]
        self.ds, self.rt, self.total = dataset, rt, len(dataset)
        self.loader = _loader(dataset, self.batches, workers, rt)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for x, y in self.loader:
            yield _to_device(self.ds, x, self.rt), y.to(self.rt.device, non_blocking=True)

    def head(self, n: int) -> torch.Tensor:
        """The first n images of the split (global order: the same on every rank), decoded here."""
        return _to_device(self.ds, torch.stack([self.ds[(i, None)][0] for i in range(min(n, self.total))]), self.rt)


# ----------------------------------------------------------------------------- data sources

@dataclass
class FolderDataConfig:
    name: Literal["imagefolder", "synthetic"] = setting("imagefolder", resume=DATASET)  # imagefolder = data.root/{train,val}; synthetic = a small tree made there (offline runs)
    root: str = setting("data/imagenet", evaluate=APPLIED)  # dataset directory with train/ and val/ class sub-directories
    image_size: int = ranged(224, ge=1)  # training crop and eval crop side, pixels
    workers: int = ranged(8, ge=0, evaluate=APPLIED)  # decoding worker processes per rank (persistent, pinned memory)
    drop_last: bool = setting(True, evaluate=IGNORED)  # train: drop the last incomplete global batch (False: keep it, padded to equal shards)


def imagefolder_data(cfg, rt, classes: list[str] | None = None) -> Loaders:
    """data.root/train and data.root/val (ImageNet layout: one sub-directory per class), torchvision presets.
    Both are labelled by class name against `classes` (a trained model's, from its checkpoint), else
    against train/'s sub-directories."""
    root = Path(cfg.data.root)
    if cfg.data.name == "synthetic":
        # Rank 0 writes the tree once (atomically); the others wait for it.
        dist.broadcast_object(synthetic_tree(root) if rt.is_main else None)
    dirs = [root / "train", root / "val"]
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"{d.resolve()} does not exist: data.root must hold train/ and val/, each with one "
                            "sub-directory of images per class (the ImageNet layout)")
    known_from = SAVED_CLASSES if classes else str(dirs[0])
    listed = []
    for d, files in zip(dirs, _listing(rt, dirs)):
        files = [f for f in files if len(Path(f).parts) > 1]  # as ImageFolder: only files in class folders
        if not files:
            raise DataError(f"found no images ({', '.join(sorted(EXTENSIONS))}) in class sub-directories of "
                            f"{d.resolve()}: data.root must hold train/ and val/, each with one sub-directory per class")
        listed.append(files)
    (train_files, val_files), classes = listed, classes or class_names(listed[0])
    train_labels, val_labels = (labels_by_name(f, classes, d, known_from) for f, d in zip(listed, dirs))
    absent = absent_classes(val_files, classes, dirs[1])
    if absent:
        rt.log(absent)
    size, workers = cfg.data.image_size, cfg.data.workers
    train_ds = ImageFiles(dirs[0], train_files, train_labels, presets(size, train=True))
    val_ds = ImageFiles(dirs[1], val_files, val_labels, presets(size, train=False))
    train = FolderTrainLoader(train_ds, rt, global_batch=cfg.train.batch_size, accum=cfg.train.grad_accum,
                              seed=cfg.seed, drop_last=cfg.data.drop_last, workers=workers)
    evaluate = FolderEvalLoader(val_ds, rt, batch_size=cfg.train.eval_batch_size, workers=workers)
    return Loaders(train, evaluate, len(classes), (3, size, size), classes)


def folder_splits(root: Path) -> tuple[Path, Path]:
    """root/train (else root) for training; root/val, root/test (else the training folder) for evaluation."""
    train = root / "train" if (root / "train").is_dir() else root
    held_out = next((root / s for s in ("val", "test") if (root / s).is_dir()), train)
    return train, held_out


def folder_data(cfg, rt, size: int, pairs: bool, eval_limit: int = 0) -> Loaders:
    """The GANs' data.name=folder: images (ImageFolder, CelebA, an exported LSUN) or pix2pix AB pairs
    under data.root, as uint8 squares scaled to [-1, 1] on the device. eval_limit > 0 keeps an
    evenly spread, fixed subset of the held-out files."""
    train_dir, eval_dir = folder_splits(Path(cfg.data.root))
    train_files, eval_files = _listing(rt, [train_dir, eval_dir])
    if not train_files:
        raise DataError(f"data.name=folder found no images ({', '.join(sorted(EXTENSIONS))}) under "
                        f"{train_dir.resolve()}: set data.root to the dataset directory")
    if eval_limit and len(eval_files) > eval_limit:
        step = len(eval_files) / eval_limit
        eval_files = [eval_files[int(i * step)] for i in range(eval_limit)]
    load = round(size * 286 / 256) if pairs and cfg.data.augment else size
    b_to_a = cfg.data.direction == "BtoA"
    train_labels, _ = class_labels(train_files)
    train_ds = ImageFiles(train_dir, train_files, train_labels,
                          SquareCrop(size, load, pairs, b_to_a, augment=cfg.data.augment))
    eval_ds = ImageFiles(eval_dir, eval_files, class_labels(eval_files)[0], SquareCrop(size, size, pairs, b_to_a))
    workers = cfg.data.workers
    train = FolderTrainLoader(train_ds, rt, global_batch=cfg.train.batch_size, accum=cfg.train.grad_accum,
                              seed=cfg.seed, drop_last=cfg.data.drop_last, workers=workers)
    evaluate = FolderEvalLoader(eval_ds, rt, batch_size=cfg.train.eval_batch_size, workers=workers)
    return Loaders(train, evaluate, max(train_labels) + 1, (6 if pairs else 3, size, size))
