"""In-memory data: the whole dataset as one uint8 tensor (on the GPU when it fits), batches
sliced by position per the batch arithmetic in common/data/sampling.py, augmentation and
MixUp/CutMix done on the device, and the classifiers' train/eval loaders."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from common.config import ConfigError
from common.data.datasets import channel_stats, load_split, read_folder, read_images
from common.data.files import SAVED_CLASSES
from common.data.mixing import batch_mix
from common.data.policies import SampleAugment
from common.data.sampling import TrainPlan, augment_generator, check_batch, epoch_order, eval_shard
from common.data.shards import shard_splits

POLICY_BYTES = 2**26  # uint8 images per policy pass (data.auto_augment): 21,845 CIFAR images, bounded memory

def _augment(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Random crop after zero padding `pad`, then horizontal flip; per-sample parameters given."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (shifts[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (shifts[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = xp[torch.arange(b, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    return torch.where(flips[:, None, None, None], out.flip(3), out)


def normalised(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images -> the model's input: [0, 1], then per channel (x - mean) / std (mean, std: [1, C, 1, 1])."""
    return (x.float().div_(255) - mean) / std


def _store(t: torch.Tensor, device, storage) -> torch.Tensor:
    """The dataset tensor where it lives: on the compute device, or pinned in host memory."""
    storage = torch.device(device if storage is None else storage)
    if storage.type == "cpu" and torch.device(device).type == "cuda":
        return t.to(storage).pin_memory()
    return t.to(storage)


def _fetch(t: torch.Tensor, idx, device: torch.device) -> torch.Tensor:
    """t[idx] on `device`: a host-stored batch is gathered into pinned memory and copied without
    blocking, so the copy overlaps the previous step's kernels."""
    batch = t[idx]
    if batch.device == device:
        return batch
    return (batch.pin_memory() if device.type == "cuda" else batch).to(device, non_blocking=True)


def storage_device(in_memory: bool, device: torch.device, nbytes: int, free_bytes: int | None = None,
                   share: float = 0.25) -> torch.device:
    """Where a dataset of `nbytes` lives: on the compute device when data.in_memory and it takes at
    most `share` of the device's free memory (the rest is for the model and activations), else in
    host memory. CPU runs keep it in host memory either way."""
    if not in_memory or device.type == "cpu":
        return torch.device("cpu")
    if free_bytes is None and device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
    if free_bytes is not None and nbytes > share * free_bytes:
        return torch.device("cpu")
    return device


def tensor_loader_args(cfg, rt, *tensors: torch.Tensor) -> dict:
    """Keyword arguments shared by TensorTrainLoader/TensorEvalLoader for this rank and dataset."""
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    storage = storage_device(cfg.data.in_memory, rt.device, nbytes)
    if cfg.data.in_memory and storage != rt.device:
        rt.log(f"data: {nbytes / 2**30:.1f} GiB does not fit in a quarter of {rt.device}'s free memory; keeping it "
               "in pinned host memory and copying each batch (data.in_memory=false says so explicitly)")
    return dict(world=rt.world_size, rank=rt.rank, device=rt.device, memory_format=rt.memory_format, storage=storage)


class TensorTrainLoader:
    """Whole dataset as one uint8 tensor on the device; each step slices a batch of positions.

    Iterating yields one list of micro-batches per optimizer step, [(x, y)] * grad_accum.
    Augmentation parameters are drawn per epoch position from (seed, epoch), so a sample
    gets the same crop and policy whatever the world size and wherever the run resumed.
    Order per sample as torchvision's ClassificationPresetTrain: crop/flip and the policy on
    uint8, then to float and normalised, then random erasing; MixUp/CutMix on the batch.
    """

    def __init__(self, images, labels, mean, std, *, global_batch, world, rank, accum, seed,
                 drop_last=True, augment=False, device="cpu", memory_format=torch.contiguous_format,
                 mix=None, storage=None, sample_augment=None, ra_reps=1):
        check_batch(global_batch, world, accum, ra_reps)
        self.images, self.labels = _store(images, device, storage), _store(labels, device, storage)
        self.plan = TrainPlan(len(labels), global_batch, world, drop_last, ra_reps)
        if self.plan.steps == 0:
            raise ConfigError(f"train.batch_size={global_batch} is larger than the training set ({len(labels)} "
                              "samples) with data.drop_last=true: lower the batch size")
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.rank, self.accum, self.seed, self.augment = rank, accum, seed, augment
        self.device, self.memory_format = torch.device(device), memory_format
        self.epoch, self.start_step = 0, 0
        self.mix = mix  # a mixing.BatchMix: MixUp/CutMix over the global batch
        self.sample_augment = sample_augment  # a policies.SampleAugment: auto_augment, random_erase
        # Steps whose policy runs together: enough samples that most op groups hold many of them.
        step_bytes = self.plan.per_rank * images[0].numel()
        self.chunk = max(1, POLICY_BYTES // step_bytes) if sample_augment and sample_augment.policy else 1

    def __len__(self) -> int:
        return self.plan.steps - self.start_step

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def _epoch_tensors(self):
        n = self.plan.n
        order = epoch_order(n, self.seed, self.epoch)
        g = augment_generator(self.seed, self.epoch)
        shifts = torch.randint(0, 9, (n, 2), generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        drawn = self.sample_augment.draw(n, g) if self.sample_augment else {}
        return order.to(self.images.device), shifts.to(self.device), flips.to(self.device), drawn

    def _positions(self, step: int):
        """This rank's view positions at `step` (led by the one its first is mixed with, under MixUp/CutMix):
        they index the per-sample draws; _samples maps them to the samples shown (data.ra_reps)."""
        lo, hi = self.plan.shard(step, self.rank)
        if self.mix is None and self.chunk == 1 and self.plan.reps == 1 and hi <= self.plan.n:
            return slice(lo, hi)  # the plain case: slices of the epoch's tensors, no index tensor
        return self.plan.views(step, self.rank, lead=self.mix is not None)[1]

    def _samples(self, order: torch.Tensor, pos) -> torch.Tensor:
        return order[pos] if self.plan.reps == 1 else order[self.plan.sample_of(pos)]

    def _uint8(self, order, shifts, flips, drawn, pos) -> torch.Tensor:
        x = _fetch(self.images, self._samples(order, pos), self.device)
        if self.augment:
            x = _augment(x, shifts[pos], flips[pos], pad=4)
        if self.sample_augment:
            x = self.sample_augment.apply_policy(x, {k: v[pos] for k, v in drawn.items()})
        return x

    def __iter__(self):
        order, shifts, flips, drawn = self._epoch_tensors()
        steps = list(range(self.start_step, self.plan.steps))
        for c in range(0, len(steps), self.chunk):
            positions = [self._positions(step) for step in steps[c:c + self.chunk]]
            if len(positions) == 1:
                images = [self._uint8(order, shifts, flips, drawn, positions[0])]
            else:  # one policy pass over the chunk, split back into steps
                images = self._uint8(order, shifts, flips, drawn, torch.cat(positions)).split([len(p) for p in positions])
            for step, pos, x in zip(steps[c:c + self.chunk], positions, images):
                y = _fetch(self.labels, self._samples(order, pos), self.device)
                x = normalised(x, self.mean, self.std).contiguous(memory_format=self.memory_format)
                if self.sample_augment:
                    x = self.sample_augment.apply_erase(x, {k: v[pos] for k, v in drawn.items()})
                if self.mix is not None:
                    x, y = self.mix(x, y, self.epoch, step)
                yield list(zip(x.tensor_split(self.accum), y.tensor_split(self.accum)))


class TensorEvalLoader:
    """Unpadded eval shard of this rank; every sample of the split appears on exactly one rank."""

    def __init__(self, images, labels, mean, std, *, batch_size, world, rank, device="cpu",
                 memory_format=torch.contiguous_format, storage=None):
        self.images, self.labels = _store(images, device, storage), _store(labels, device, storage)
        self.idx = eval_shard(len(labels), world, rank).to(self.images.device)
        self.device = torch.device(device)
        self.total = len(labels)
        self.batch = max(1, batch_size // world)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.memory_format = memory_format

    def __len__(self) -> int:
        return math.ceil(len(self.idx) / self.batch)

    def __iter__(self):
        for idx in self.idx.split(self.batch):
            x = normalised(_fetch(self.images, idx, self.device), self.mean, self.std)
            yield x.contiguous(memory_format=self.memory_format), _fetch(self.labels, idx, self.device)


@dataclass
class Loaders:
    train: TensorTrainLoader
    eval: TensorEvalLoader
    num_classes: int
    shape: tuple[int, int, int]
    classes: list[str] | None = None  # class names, where the data says them (an image folder's sub-directories)
    stats: tuple[list[float], list[float]] | None = None  # per-channel (mean, std) the inputs are normalised with


def _pad(images: torch.Tensor, size: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    if size <= 0 or (h >= size and w >= size):
        return images
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


def classification_data(cfg, rt, classes: list[str] | None = None,
                        stats: tuple[list[float], list[float]] | None = None) -> Loaders:
    """Train and eval loaders for an image-classification recipe, sharded for this rank. classes: the
    class names a trained model knows (its checkpoint's), which an image folder is labelled against;
    None: a new run's, train/'s sub-directories. stats: the (mean, std) a trained model's inputs were
    normalised with (its checkpoint's); None: measured on these training images."""
    d = cfg.data
    if d.name == "folder":
        root, known_from = Path(d.root), SAVED_CLASSES if classes else None
        train_x, train_y, classes, _ = read_folder(root, "train", d.folder_shape, classes, known_from)
        test_x, test_y, _, absent = read_folder(root, "test", d.folder_shape, classes, known_from)
        if absent:
            rt.log(absent)
    elif d.name == "shards":  # the same files packed (common/data/pack.py), decoded as read_folder does
        train_src, test_src, classes, absent = shard_splits(d, classes)
        train_x, train_y = read_images(train_src, d.folder_shape), torch.tensor(train_src.labels)
        test_x, test_y = read_images(test_src, d.folder_shape), torch.tensor(test_src.labels)
        if absent:
            rt.log(absent)
    else:  # a dataset read by name: its labels are its own
        classes = None
        train_x, train_y = load_split(d, "train")
        test_x, test_y = load_split(d, "test")
    train_x, test_x = _pad(train_x, d.pad_to), _pad(test_x, d.pad_to)
    mean, std = stats or channel_stats(d.name, train_x)
    mean, std = mean * (train_x.shape[1] // len(mean)), std * (train_x.shape[1] // len(std))
    common = tensor_loader_args(cfg, rt, train_x, train_y, test_x, test_y)
    num_classes = len(classes) if classes else int(max(train_y.max(), test_y.max())) + 1
    train = TensorTrainLoader(train_x, train_y, mean, std, global_batch=cfg.train.batch_size,
                              accum=cfg.train.grad_accum, seed=cfg.seed, drop_last=d.drop_last,
                              augment=d.augment, mix=batch_mix(d, num_classes, cfg.seed),
                              sample_augment=SampleAugment(d, tuple(train_x.shape[1:])) if SampleAugment.wanted(d) else None,
                              ra_reps=d.ra_reps, **common)
    evaluate = TensorEvalLoader(test_x, test_y, mean, std, batch_size=cfg.train.eval_batch_size, **common)
    return Loaders(train, evaluate, num_classes, tuple(train_x.shape[1:]), classes, (mean, std))
