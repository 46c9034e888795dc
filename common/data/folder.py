"""Image folders on disk as a recipe's data: data.root/train and data.root/val for the classifiers
(imagefolder_data, torchvision's classification presets), images or pix2pix A|B pairs for the GANs (folder_data).

Rank 0 lists the tree once (slow on network file systems) and every rank indexes its list; classes
are labelled by name (common/data/files.py). Decoding, transforms and batches: the streaming loaders
(common/data/streaming.py) with the transforms of common/data/transforms.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common import dist
from common.config import DATASET, ranged
from common.fields import APPLIED, IGNORED, setting
from common.data.augment_config import AugmentConfig
from common.data.datasets import DataError, synthetic_tree
from common.data.files import (EXTENSIONS, SAVED_CLASSES, absent_classes, class_labels, class_names,
                               labels_by_name, list_images)
from common.data.classifier_data import Loaders
from common.data.fast_jpeg import FastJpeg
from common.data.gpu_decode import GpuDecode
from common.data.mixing import batch_mix
from common.data.shards import shard_splits
from common.data.streaming import FolderEvalLoader, FolderTrainLoader, ImageFiles
from common.data.transforms import Preset, SquareCrop


def list_all(dirs: list[Path]) -> list[list[str]]:
    """The image files under each directory (run by rank 0: see dist.on_main)."""
    try:
        return [list_images(d) for d in dirs]
    except OSError as e:
        raise DataError(f"cannot read the image folders under {dirs[0].parent.resolve()}: {e}") from None


@dataclass
class FolderDataConfig(AugmentConfig):
    name: Literal["imagefolder", "shards", "synthetic"] = setting("imagefolder", resume=DATASET)  # imagefolder = data.root/{train,val}; shards = them packed (docs/data.md); synthetic = generated
    root: str = setting("data/imagenet", evaluate=APPLIED)  # directory with train/ and val/ class folders (data.name=shards: the pack, or its shards' paths)
    decode: Literal["pil", "fast", "gpu"] = setting("pil", evaluate=APPLIED)  # pil = torchvision's presets; fast = a faster CPU JPEG path; gpu = nvJPEG on CUDA (docs/data.md)
    shard_cache: str = setting("", evaluate=APPLIED, read_when="data.name=shards")  # data.name=shards from URLs: where a node copies the shards; "" = ~/.cache/dtrain/shards
    image_size: int = ranged(224, ge=1)  # training and eval crop side, pixels (data.train_crop, data.val_crop override it)
    train_crop: int = ranged(0, ge=0)  # RandomResizedCrop side = the model's input, pixels; 0 = data.image_size
    val_resize: int = ranged(0, ge=0)  # eval: shorter side resized to this, then centre-cropped; 0 = round(val_crop / 0.875)
    val_crop: int = ranged(0, ge=0)  # eval centre crop side, pixels (FixRes: train 176, eval 224 from 232); 0 = data.image_size
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # resampling of the crops, resizes and auto_augment's geometric ops
    workers: int = ranged(8, ge=0, evaluate=APPLIED)  # decoding worker processes per rank (persistent, pinned memory)
    drop_last: bool = setting(True, evaluate=IGNORED)  # train: drop the last incomplete global batch (False: keep it, padded to equal shards)


DECODERS = {"pil": Preset, "fast": FastJpeg, "gpu": GpuDecode}  # data.decode -> the transform that decodes and augments an image file's bytes


def image_transform(d, train: bool):
    """The train or eval transform of data.decode (each has Preset's interface: draw, load, on_device, size)."""
    return DECODERS[d.decode](d, train)


def imagefolder_data(cfg, rt, classes: list[str] | None = None) -> Loaders:
    """data.root/train and data.root/val (ImageNet layout: one sub-directory per class), or the same packed as tar
    shards (data.name=shards, common/data/shards.py), through torchvision's presets (common/data/transforms.py
    Preset); the model's input is the train crop, evaluation runs at data.val_crop. Both are labelled by class
    name against `classes` (a trained model's, from its checkpoint), else against train/'s sub-directories."""
    transforms = image_transform(cfg.data, train=True), image_transform(cfg.data, train=False)
    if cfg.data.name == "shards":
        train_ds, val_ds, classes, absent = shard_splits(cfg.data, classes, "val", transforms)
    else:
        train_ds, val_ds, classes, absent = folder_sources(cfg.data, classes, transforms)
    if absent:
        rt.log(absent)
    workers, train_t = cfg.data.workers, transforms[0]
    train = FolderTrainLoader(train_ds, rt, global_batch=cfg.train.batch_size, accum=cfg.train.grad_accum,
                              seed=cfg.seed, drop_last=cfg.data.drop_last, workers=workers,
                              mix=batch_mix(cfg.data, len(classes), cfg.seed), ra_reps=cfg.data.ra_reps)
    evaluate = FolderEvalLoader(val_ds, rt, batch_size=cfg.train.eval_batch_size, workers=workers)
    return Loaders(train, evaluate, len(classes), (3, train_t.size, train_t.size), classes)


def folder_sources(data, classes: list[str] | None, transforms):
    """data.root/train and data.root/val as ImageFiles, the class list and the log line naming val's absent classes."""
    root = Path(data.root)
    if data.name == "synthetic":
        dist.on_main(lambda: synthetic_tree(root))  # written once (atomically); the others wait for it
    dirs = [root / "train", root / "val"]
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"{d.resolve()} does not exist: data.root must hold train/ and val/, each with one "
                            "sub-directory of images per class (the ImageNet layout)")
    known_from = SAVED_CLASSES if classes else str(dirs[0])
    listed = []
    for d, files in zip(dirs, dist.on_main(lambda: list_all(dirs))):
        files = [f for f in files if len(Path(f).parts) > 1]  # as ImageFolder: only files in class folders
        if not files:
            raise DataError(f"found no images ({', '.join(sorted(EXTENSIONS))}) in class sub-directories of "
                            f"{d.resolve()}: data.root must hold train/ and val/, each with one sub-directory per class")
        listed.append(files)
    (train_files, val_files), classes = listed, classes or class_names(listed[0])
    train_labels, val_labels = (labels_by_name(f, classes, d, known_from) for f, d in zip(listed, dirs))
    return (ImageFiles(dirs[0], train_files, train_labels, transforms[0]),
            ImageFiles(dirs[1], val_files, val_labels, transforms[1]), classes, absent_classes(val_files, classes, dirs[1]))


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
    train_files, eval_files = dist.on_main(lambda: list_all([train_dir, eval_dir]))
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
