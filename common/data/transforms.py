"""The per-sample transforms of the streaming loaders (common/data/streaming.py).

Each has `draw(n, generator)`: the per-sample parameters of an epoch, drawn by the sampler from
augment_generator(seed, epoch) by epoch position (None for evaluation), so an augmentation depends
neither on workers, world size nor resume; `__call__(x, params)` in the worker; and `on_device(x)`
once the batch is on the device. Seeded wraps a function that draws from torch's RNG (torchvision's
classification presets, a user Dataset); SquareCrop is the GANs' uint8 square or A|B crop.
"""
from __future__ import annotations

import torch

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


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
