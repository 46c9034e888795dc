"""Datasets by name: readers for the files users have (IDX, CIFAR's python pickles), the offline
synthetic set, downloads, and per-channel statistics. Everything returns uint8 images on the CPU."""
from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import dist
from common.config import ConfigError
from common.data.files import DataError, absent_classes, class_names, decode, labels_by_name, list_images
from common.data.streaming import ImageFiles

SYSTEM_DIRS = {"fashion_mnist": [Path("/usr/share/datasets/fashion-mnist")]}  # Debian: dataset-fashion-mnist
STATS = {  # per-channel mean/std of the training split, in [0, 1] units
    "mnist": ([0.1307], [0.3081]),
    "fashion_mnist": ([0.2860], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    "synthetic": ([0.5], [0.25]),
}
SHAPES = {"mnist": [1, 28, 28], "fashion_mnist": [1, 28, 28], "cifar10": [3, 32, 32], "cifar100": [3, 32, 32]}  # C, H, W as read


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


def read_folder(root: Path, split: str, shape: list[int], classes: list[str] | None = None,
                known_from: str | None = None):
    """An ImageFolder tree's split as uint8 [N, C, H, W] (the recipe's input shape: each image resized and
    centre-cropped to H x W, grey or RGB by C), its labels, the class list and a log line naming the
    classes it lacks (or None). Training images come from root/train; evaluation from root/val, else
    root/test. Labels are the index of each class folder's name in `classes` (the list a model knows,
    from `known_from`: root/train unless said); None: this split's own folders, sorted (a new run's
    train/)."""
    names = ["train"] if split == "train" else ["val", "test"]
    d = next((root / n for n in names if (root / n).is_dir()), None)
    if d is None:
        raise DataError(f"data.name=folder: {root.resolve()} has no {' or '.join(n + '/' for n in names)}; data.root "
                        "must hold train/ and val/, each with one sub-directory of images per class")
    files = [f for f in list_images(d) if len(Path(f).parts) > 1]
    if not files:
        raise DataError(f"data.name=folder found no images in class sub-directories of {d.resolve()}")
    classes = class_names(files) if classes is None else classes
    labels = labels_by_name(files, classes, d, known_from or str(root / "train"))
    images = read_images(ImageFiles(d, files, labels, None), shape)
    return images, torch.tensor(labels), classes, absent_classes(files, classes, d)


def read_images(source, shape: list[int]) -> torch.Tensor:
    """Every image of an ImageFiles source (a folder's files, a pack's shards) as uint8 [N, C, H, W]: decoded,
    grey or RGB by C, resized and centre-cropped to H x W. Decoded with threads (PIL releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def load(i):
        return fit(decode(source.read(i), source.where(i)), shape)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return torch.stack(list(pool.map(load, range(len(source)))))


def fit(img, shape: list[int]) -> torch.Tensor:
    """A decoded (RGB) PIL image as the in-memory classifiers' uint8 [C, H, W]: grey or RGB by C, resized and
    centre-cropped to H x W (PIL.ImageOps.fit, bicubic). read_images and inference (common/lifecycle/preprocess.py)."""
    from PIL import Image, ImageOps
    c, h, w = shape
    img = ImageOps.fit(img.convert("L" if c == 1 else "RGB"), (w, h), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).reshape(h, w, -1).permute(2, 0, 1)


def channel_stats(name: str, train_images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] units: the published figures for a named dataset, measured on the
    training images for a user's folder."""
    if name in STATS:
        return STATS[name]
    x = train_images.float().div_(255).transpose(0, 1).flatten(1)
    return x.mean(1).tolist(), x.std(1).clamp_min(1e-3).tolist()


def load_split(cfg_data, split: str):
    """(uint8 images [N, C, H, W], int64 labels [N]) on the CPU."""
    name, root = cfg_data.name, Path(cfg_data.root)
    if name == "synthetic":
        n = cfg_data.synthetic_train if split == "train" else cfg_data.synthetic_test
        return synthetic(n, cfg_data.synthetic_shape, cfg_data.synthetic_classes, split)
    if name == "folder":  # the held-out split is labelled by train/'s class names
        classes = None if split == "train" else class_names(list_images(root / "train"))
        return read_folder(root, split, cfg_data.folder_shape, classes)[:2]
    if name not in TV_FOLDER:
        raise ConfigError(f"data.name={name!r} is not one of {', '.join([*TV_FOLDER, 'synthetic', 'folder'])}")
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


def synthetic_tree(root: Path, classes: int = 3, train: int = 16, val: int = 4) -> None:
    """A small ImageFolder tree of real JPEG files in root/{train,val}/class_i, one colour per class
    plus noise, made once (written beside and renamed into place, so a killed writer leaves none)."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        return
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = tmp / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            colour = torch.tensor([[255.0 * (c == k) for k in range(3)]]).view(1, 1, 3) * 0.7 + 30
            for i in range(n):
                h, w = (int(v) for v in torch.randint(40, 80, (2,), generator=g))
                img = (colour + torch.randn(h, w, 3, generator=g) * 30).clamp(0, 255).to(torch.uint8)
                Image.fromarray(img.numpy()).save(d / f"{i}.jpg", quality=90)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(root)
    except OSError:  # root exists (another process made it, or an empty directory): use what is there
        shutil.rmtree(tmp, ignore_errors=True)
