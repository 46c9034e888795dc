"""Image folders on disk for the data tests: one writer (image_tree) and the real Fashion-MNIST tree built on it.

common.data.datasets.synthetic_tree is the library's own generated tree (imagenet_debug's data); these
are the tests' trees, whose pixels each test chooses so that it can tell the files apart after loading.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_CLASSES = {"tshirt": 0, "trouser": 1, "pullover": 2}  # folder name -> Fashion-MNIST label


def image_tree(root: Path, counts: dict[str, int] | int, pixels: Callable[[str, int], object],
               classes: int | list[str] = 2, ext: str = "png", name: str = "{:03d}") -> Path:
    """Real image files in the ImageFolder layout: root/<split>/<class>/<name>.<ext> for each split of
    `counts` ({"train": 21, "val": 10}), or root/<class>/<name>.<ext> for a plain count. Image i of a split
    goes to class i % len(classes) (class names c0, c1, ... for a number) and holds pixels(split, i):
    an HxWx3 or HxW uint8 array or tensor. Files are written in order, so pixels may draw from a generator."""
    from PIL import Image
    names = [f"c{c}" for c in range(classes)] if isinstance(classes, int) else list(classes)
    for split, n in (counts.items() if isinstance(counts, dict) else [("", counts)]):
        for i in range(n):
            folder = root / split / names[i % len(names)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(pixels(split, i))).save(folder / f"{name.format(i)}.{ext}")
    return root


def fashion_tree(root: Path, train: int = 40, val: int = 10, classes: dict[str, int] = FASHION_CLASSES) -> Path:
    """An ImageFolder tree of real Fashion-MNIST images: root/{train,val}/<class>/<i>.png, 28x28 grey,
    `train` and `val` per class (distinct images, from the test split). Skips where the files are missing."""
    import pytest
    from common.data.datasets import read_idx
    images, labels = FASHION / "t10k-images-idx3-ubyte.gz", FASHION / "t10k-labels-idx1-ubyte.gz"
    if not images.is_file():
        pytest.skip("apt-get install dataset-fashion-mnist for the image-folder trees")
    x, y = read_idx(images), read_idx(labels)
    picks = [(y == label).nonzero()[0][:train + val] for label in classes.values()]
    first = {"train": 0, "val": train}  # val images come after the train ones: no image in both

    def pixels(split, i):
        return x[picks[i % len(picks)][first[split] + i // len(picks)]]
    return image_tree(root, {"train": train * len(picks), "val": val * len(picks)}, pixels, list(classes))
