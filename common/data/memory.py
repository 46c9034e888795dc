"""Datasets, the sharded train sampler, the exact eval sampler, and the in-memory loader.

Two different `drop_last`s (README, "How batches are cut"):
  * sampler level: an epoch's samples must split into equal shards, one per rank.
    The last global batch may not divide by world size: its shards are padded with
    repeats from the start of the epoch's order.
  * loader level (`data.drop_last`): drop the last *short* global batch entirely
    (default), so every step has the same global batch size on every rank.
Training shuffles with a permutation that depends only on (seed, epoch), and a
position in that permutation is the only cursor: resuming at step k skips k global
batches by arithmetic, without touching the data. Evaluation shards are unpadded,
so every sample is counted exactly once.
"""
from __future__ import annotations

import gzip
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import dist
from common.config import ConfigError, UserError

SYSTEM_DIRS = {"fashion_mnist": [Path("/usr/share/datasets/fashion-mnist")]}  # Debian: dataset-fashion-mnist
STATS = {  # per-channel mean/std of the training split, in [0, 1] units
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2860], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    "synthetic": ([0.5], [0.25]),
}


class DataError(UserError):
    """A dataset problem the user can fix; the message says how."""


# ----------------------------------------------------------------------------- readers

def read_idx(path: Path) -> np.ndarray:
    """IDX (the MNIST file format), plain or gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX ubyte file (bad magic number); delete it and fetch it again")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise DataError(f"{path} is truncated: header says {shape}, found {data.size} bytes; fetch it again")
    return data.reshape(shape)


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
TV_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "", "cifar100": ""}


def _find(dirs: list[Path], name: str) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _idx_dirs(name: str, root: Path) -> list[Path]:
    return [root, root / TV_FOLDER[name] / "raw"] + SYSTEM_DIRS.get(name, [])


def _read_mnist_like(name: str, root: Path, split: str):
    dirs = _idx_dirs(name, root)
    paths = [_find(dirs, f) for f in IDX_FILES[split]]
    if None in paths:
        return None
    images, labels = (read_idx(p) for p in paths)
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


CIFAR = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
         "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels")}


def _read_cifar(name: str, root: Path, split: str):
    folder, train_files, test_files, label_key = CIFAR[name]
    files = [root / folder / f for f in (train_files if split == "train" else test_files)]
    if not all(f.is_file() for f in files):
        return None
    xs, ys = [], []
    for f in files:
        with open(f, "rb") as fh:
            # The official CIFAR "python version" is a pickle of numpy arrays; this is the
            # only pickle this project reads, and only from the dataset directory.
            batch = pickle.load(fh, encoding="bytes")
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def synthetic(n: int, shape: list[int], classes: int, split: str):
    """Class-dependent images a model can learn: a fixed random prototype per class plus noise.

    The prototypes depend on nothing but the shape, so train and test agree.
    """
    g = torch.Generator().manual_seed(1234)
    # Smooth (4x4 upsampled) prototypes: the class survives crops and flips, so conv nets
    # with global pooling learn it in a few steps, like an MLP does.
    c, h, w = shape
    coarse = torch.rand((classes, c, 4, 4), generator=g)
    protos = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * 255
    g.manual_seed({"train": 1, "test": 2}[split])
    labels = torch.randint(0, classes, (n,), generator=g)
    noise = torch.randn((n, *shape), generator=g) * 64
    return (protos[labels] + noise).clamp(0, 255).to(torch.uint8), labels


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # urllib/HTTP/SSL errors all mean the same thing to the user
        raise DataError(f"downloading {name} into {root} failed ({type(e).__name__}: {e}). "
                        f"{_where_to_put(name, root)}") from None


def _where_to_put(name: str, root: Path) -> str:
    if name in CIFAR:
        where = f"{root / CIFAR[name][0]}/ (the 'python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html, extracted)"
    else:
        where = f"{root}/ or {root / TV_FOLDER[name] / 'raw'}/ (the four *-ubyte.gz IDX files)"
        if name == "fashion_mnist":
            where += "; on Debian/Ubuntu `apt-get install dataset-fashion-mnist` provides them offline"
    return f"Put the files in {where}, or run on a connected machine with data.download=true, or try data.name=synthetic."


def load_split(cfg_data, split: str):
    """(uint8 images [N, C, H, W], int64 labels [N]) on the CPU."""
    name, root = cfg_data.name, Path(cfg_data.root)
    if name == "synthetic":
        n = cfg_data.synthetic_train if split == "train" else cfg_data.synthetic_test
        return synthetic(n, cfg_data.synthetic_shape, cfg_data.synthetic_classes, split)
    if name not in TV_FOLDER:
        raise ConfigError(f"data.name={name!r} is not one of {', '.join([*TV_FOLDER, 'synthetic'])}")
    reader = _read_cifar if name in CIFAR else _read_mnist_like
    found = reader(name, root, split)
    if found is None and cfg_data.download:
        # Rank 0 downloads; the others wait at the barrier, then read what it wrote.
        if dist.rank() == 0:
            _download(name, root)
        if dist.world_size() > 1:
            torch.distributed.barrier()
        found = reader(name, root, split)
    if found is None:
        raise DataError(f"{name} ({split}) not found under {root.resolve()}. {_where_to_put(name, root)}")
    return found


# ----------------------------------------------------------------------------- batch arithmetic

@dataclass(frozen=True)
class TrainPlan:
    """How one epoch of `n` samples is cut into global batches and rank shards."""
    n: int
    global_batch: int
    world: int
    drop_last: bool

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world

    @property
    def steps(self) -> int:
        full, tail = divmod(self.n, self.global_batch)
        return full + (1 if tail and not self.drop_last else 0)

    def shard(self, step: int, rank: int) -> tuple[int, int]:
        """[start, stop) positions in the epoch's order for this rank at this step.

        Positions >= n wrap around to the start of the order (padding with repeats).
        """
        start = step * self.global_batch
        size = min(self.global_batch, self.n - start)
        local = math.ceil(size / self.world)  # equal shards; the tail shard may repeat samples
        return start + rank * local, start + (rank + 1) * local

    @property
    def padded(self) -> int:
        """Repeated samples per epoch (only with drop_last=False and a tail not divisible by world)."""
        tail = self.n % self.global_batch
        return 0 if self.drop_last or not tail else math.ceil(tail / self.world) * self.world - tail

    @property
    def dropped(self) -> int:
        return self.n % self.global_batch if self.drop_last else 0


def check_batch(global_batch: int, world: int, accum: int) -> None:
    if global_batch % (world * accum):
        lo = global_batch // (world * accum) * world * accum
        hint = f"train.batch_size={lo or world * accum} or {lo + world * accum}"
        raise ConfigError(f"train.batch_size={global_batch} is the global batch and must be divisible by "
                          f"world_size x train.grad_accum = {world} x {accum} = {world * accum}; use {hint}")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation for an epoch: a function of (seed, epoch) only, identical on every rank."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def augment_generator(seed: int, epoch: int) -> torch.Generator:
    """The private generator of an epoch's per-sample augmentation draws (crops, flips, seeds).

    A function of (seed, epoch) only, like epoch_order, and independent of it; every loader
    (in-memory, image folders) draws from it by epoch position, so a sample's augmentation does
    not depend on world size, worker count, or where the run resumed.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_777_777)


def eval_shard(n: int, world: int, rank: int) -> torch.Tensor:
    """Unpadded strided shard: shards differ in length by at most one, their union is range(n)."""
    return torch.arange(n)[rank::world]


# ----------------------------------------------------------------------------- in-memory loaders

def _augment(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Random crop after zero padding `pad`, then horizontal flip; per-sample parameters given."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (shifts[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (shifts[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = xp[torch.arange(b, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    return torch.where(flips[:, None, None, None], out.flip(3), out)


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
    gets the same crop whatever the world size and wherever the run resumed.
    """

    def __init__(self, images, labels, mean, std, *, global_batch, world, rank, accum, seed,
                 drop_last=True, augment=False, device="cpu", memory_format=torch.contiguous_format,
                 mix=None, storage=None):
        check_batch(global_batch, world, accum)
        self.images, self.labels = _store(images, device, storage), _store(labels, device, storage)
        self.plan = TrainPlan(len(labels), global_batch, world, drop_last)
        if self.plan.steps == 0:
            raise ConfigError(f"train.batch_size={global_batch} is larger than the training set ({len(labels)} "
                              "samples) with data.drop_last=true: lower the batch size")
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.rank, self.accum, self.seed, self.augment = rank, accum, seed, augment
        self.device, self.memory_format = torch.device(device), memory_format
        self.epoch, self.start_step = 0, 0
        self.mix = mix  # batch transform returning (x, soft targets), e.g. MixUp/CutMix

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
        return order.to(self.images.device), shifts.to(self.device), flips.to(self.device)

    def __iter__(self):
        order, shifts, flips = self._epoch_tensors()
        n = self.plan.n
        for step in range(self.start_step, self.plan.steps):
            lo, hi = self.plan.shard(step, self.rank)
            pos = torch.arange(lo, hi) % n if hi > n else slice(lo, hi)  # wraps only with drop_last=false
            idx = order[pos]
            x, y = _fetch(self.images, idx, self.device), _fetch(self.labels, idx, self.device)
            x = x.float().div_(255)
            if self.augment:
                x = _augment(x, shifts[pos], flips[pos], pad=4)
            x = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            if self.mix is not None:
                # Seeded per (seed, epoch, step, rank): the same mix after a resume, global RNG untouched.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + step) * 4096 + self.rank)
                    x, y = self.mix(x, y)
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
            x = (_fetch(self.images, idx, self.device).float().div_(255) - self.mean) / self.std
            yield x.contiguous(memory_format=self.memory_format), _fetch(self.labels, idx, self.device)


def batch_mix(d, num_classes: int):
    """MixUp and/or CutMix from torchvision.transforms.v2 (None when both alphas are 0)."""
    if d.mixup_alpha <= 0 and d.cutmix_alpha <= 0:
        return None
    from torchvision.transforms import v2
    mixes = [v2.MixUp(alpha=d.mixup_alpha, num_classes=num_classes)] if d.mixup_alpha > 0 else []
    mixes += [v2.CutMix(alpha=d.cutmix_alpha, num_classes=num_classes)] if d.cutmix_alpha > 0 else []
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


@dataclass
class Loaders:
    train: TensorTrainLoader
    eval: TensorEvalLoader
    num_classes: int
    shape: tuple[int, int, int]


def _pad(images: torch.Tensor, size: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    if size <= 0 or (h >= size and w >= size):
        return images
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


def classification_data(cfg, rt) -> Loaders:
    """Train and eval loaders for an image-classification recipe, sharded for this rank."""
    d = cfg.data
    train_x, train_y = load_split(d, "train")
    test_x, test_y = load_split(d, "test")
    train_x, test_x = _pad(train_x, d.pad_to), _pad(test_x, d.pad_to)
    mean, std = STATS[d.name]
    mean, std = mean * (train_x.shape[1] // len(mean)), std * (train_x.shape[1] // len(std))
    common = tensor_loader_args(cfg, rt, train_x, train_y, test_x, test_y)
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    train = TensorTrainLoader(train_x, train_y, mean, std, global_batch=cfg.train.batch_size,
                              accum=cfg.train.grad_accum, seed=cfg.seed, drop_last=d.drop_last,
                              augment=d.augment, mix=batch_mix(d, num_classes), **common)
    evaluate = TensorEvalLoader(test_x, test_y, mean, std, batch_size=cfg.train.eval_batch_size, **common)
    return Loaders(train, evaluate, num_classes, tuple(train_x.shape[1:]))
