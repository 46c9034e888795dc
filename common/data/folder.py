"""Streaming an ImageFolder tree from disk: worker processes, pinned memory, sharded like the rest.

The batch sampler cuts epochs with the same TrainPlan arithmetic as the in-memory loader
(equal shards per rank, order from (seed, epoch), resume by step index), and hands each
sample a seed drawn from (seed, epoch), so random crops do not depend on the number of
workers, the world size, or where the run resumed.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common import dist
from common.data.memory import DataError, Loaders, TrainPlan, check_batch, epoch_order, eval_shard

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def presets(size: int, train: bool):
    """torchvision's reference presets: RandomResizedCrop + flip; eval resize to size/0.875, center crop."""
    from torchvision.transforms import v2
    head = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()] if train else \
        [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([v2.ToImage(), *head, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class SeededImageFolder(Dataset):
    """ImageFolder whose items are (index, seed): the transform's randomness comes from the seed."""

    def __init__(self, root: Path, transform, samples=None, classes=None):
        from torchvision.datasets import ImageFolder
        if samples is None:
            folder = ImageFolder(str(root))
            samples, classes = folder.samples, folder.classes
        self.samples, self.classes, self.transform = samples, classes, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        index, seed = item
        path, label = self.samples[index]
        from PIL import Image
        try:
            with Image.open(path) as f:
                img = f.convert("RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {path} ({type(e).__name__}: {e}); delete or replace the file") from None
        torch.manual_seed(seed)
        return self.transform(img), label


class ShardedBatchSampler(Sampler):
    """This rank's list of (index, seed) per step, for DataLoader(batch_sampler=...)."""

    def __init__(self, n: int, global_batch: int, world: int, rank: int, seed: int, drop_last: bool):
        self.plan, self.rank, self.seed = TrainPlan(n, global_batch, world, drop_last), rank, seed
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.plan.steps - self.start_step

    def __iter__(self):
        n = self.plan.n
        order = epoch_order(n, self.seed, self.epoch).tolist()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_777_777)
        seeds = torch.randint(0, 2**62, (n,), generator=g).tolist()
        for step in range(self.start_step, self.plan.steps):
            lo, hi = self.plan.shard(step, self.rank)
            yield [(order[p % n], seeds[p % n]) for p in range(lo, hi)]


class StreamTrainLoader:
    """Yields per step a list of grad_accum micro-batches already on the device."""

    def __init__(self, dataset, rt, *, global_batch, accum, seed, drop_last, workers, prefetch=4):
        check_batch(global_batch, rt.world_size, accum)
        self.sampler = ShardedBatchSampler(len(dataset), global_batch, rt.world_size, rt.rank, seed, drop_last)
        self.plan, self.rt, self.accum = self.sampler.plan, rt, accum
        if self.plan.steps == 0:
            raise DataError(f"train.batch_size={global_batch} is larger than the {len(dataset)} training images")
        # Persistent workers survive epochs (no re-fork, warm file caches); pinned host memory
        # lets the copy to the GPU overlap compute.
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=workers,
                                 pin_memory=rt.device.type == "cuda", persistent_workers=workers > 0,
                                 prefetch_factor=prefetch if workers > 0 else None)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_step)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.rt.device, non_blocking=True).contiguous(memory_format=self.rt.memory_format)
            y = y.to(self.rt.device, non_blocking=True)
            yield list(zip(x.tensor_split(self.accum), y.tensor_split(self.accum)))


class StreamEvalLoader:
    """Unpadded eval shard: every image of the split is evaluated exactly once over all ranks."""

    def __init__(self, dataset, rt, *, batch_size: int, workers: int):
        idx = [(i, 0) for i in eval_shard(len(dataset), rt.world_size, rt.rank).tolist()]
        per_rank = max(1, batch_size // rt.world_size)
        batches = [idx[s:s + per_rank] for s in range(0, len(idx), per_rank)]
        self.total, self.rt = len(dataset), rt
        self.loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                 pin_memory=rt.device.type == "cuda", persistent_workers=workers > 0)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield (x.to(self.rt.device, non_blocking=True).contiguous(memory_format=self.rt.memory_format),
                   y.to(self.rt.device, non_blocking=True))


def imagefolder_data(cfg, rt) -> Loaders:
    """data.root/train and data.root/val (ImageNet layout: one sub-directory per class)."""
    root = Path(cfg.data.root)
    train_dir, val_dir = root / "train", root / "val"
    for d in (train_dir, val_dir):
        if not d.is_dir():
            raise DataError(f"{d.resolve()} does not exist: data.root must hold train/ and val/, each with one "
                            "sub-directory of images per class (the ImageNet layout)")
    # Rank 0 scans the tree once (slow on network filesystems); the others get its listing.
    listing = None
    if rt.is_main:
        try:
            train, val = SeededImageFolder(train_dir, None), SeededImageFolder(val_dir, None)
            listing = (train.samples, train.classes, val.samples, val.classes)
        except (FileNotFoundError, OSError) as e:
            listing = str(e)
    listing = dist.broadcast_object(listing)
    if isinstance(listing, str):
        raise DataError(f"cannot read the image folders under {root.resolve()}: {listing}")
    train_samples, classes, val_samples, val_classes = listing
    if val_classes != classes:
        raise DataError(f"train/ has classes {classes[:5]}... but val/ has {val_classes[:5]}...: both need the same class folders")
    size, workers = cfg.data.image_size, cfg.data.workers
    train_ds = SeededImageFolder(train_dir, presets(size, True), train_samples, classes)
    val_ds = SeededImageFolder(val_dir, presets(size, False), val_samples, classes)
    train = StreamTrainLoader(train_ds, rt, global_batch=cfg.train.batch_size, accum=cfg.train.grad_accum,
                              seed=cfg.seed, drop_last=cfg.data.drop_last, workers=workers)
    evaluate = StreamEvalLoader(val_ds, rt, batch_size=cfg.train.eval_batch_size, workers=workers)
    return Loaders(train, evaluate, len(classes), (3, size, size))
