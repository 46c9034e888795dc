"""The per-sample transforms of the streaming loaders (common/data/streaming.py).

Each has `draw(n, generator)`: the per-sample parameters of an epoch, drawn by the sampler from
augment_generator(seed, epoch) by epoch position (None for evaluation), so an augmentation depends
neither on workers, world size nor resume; `__call__(x, params)` in the worker; and `on_device(x)`
once the batch is on the device. Seeded wraps a function that draws from torch's RNG (a user Dataset);
Preset is torchvision's classification presets on it (uint8 from the workers, float on the device);
SquareCrop is the GANs' uint8 square or A|B crop.
"""
from __future__ import annotations

import torch

from common.config import ConfigError
from common.data.files import decode

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
            # The CPU generator only: torch.manual_seed would also queue a seed for every accelerator
            # backend (a stack trace each, ~0.15 ms a sample) and reseed a CUDA stream it never restores.
            torch.default_generator.manual_seed(seed)
            return self.fn(x)

    @staticmethod
    def on_device(x: torch.Tensor) -> torch.Tensor:
        return x


CROP_RATIO = 0.875  # torchvision's eval resize: crop / 0.875 (224 -> 256)


def crops(d) -> tuple[int, int, int]:
    """(train crop, eval resize, eval crop) from data.train_crop/val_resize/val_crop; 0 = from data.image_size
    (both crops), the resize from the eval crop."""
    train, crop = d.train_crop or d.image_size, d.val_crop or d.image_size
    resize = d.val_resize or round(crop / CROP_RATIO)
    if resize < crop:
        raise ConfigError(f"data.val_resize={resize} is smaller than data.val_crop={crop}: the centre crop must fit "
                          f"in the resized image; set data.val_resize >= {crop} (0 = val_crop / {CROP_RATIO})")
    return train, resize, crop


def policy(d, mode) -> list:
    """data.auto_augment as torchvision's presets build it (AutoAugment = its ImageNet policy); [] for none."""
    from torchvision.transforms import v2
    if d.auto_augment == "augmix" and mode != v2.InterpolationMode.BILINEAR:
        # AugMix mixes tensors, whose affine kernels (shear, translate, rotate) have no bicubic.
        raise ConfigError(f"data.auto_augment=augmix works with data.interpolation=bilinear only (torchvision's "
                          f"AugMix has no {mode.value} on tensors); set data.interpolation=bilinear")
    return {"none": lambda: [],
            "autoaugment": lambda: [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=mode)],
            "randaugment": lambda: [v2.RandAugment(num_ops=d.randaugment_ops, magnitude=d.randaugment_magnitude,
                                                   interpolation=mode)],
            "ta_wide": lambda: [v2.TrivialAugmentWide(interpolation=mode)],
            "augmix": lambda: [v2.AugMix(severity=d.augmix_severity, interpolation=mode)]}[d.auto_augment]()


def erase_boxes(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """v2.erase with value 0 on a batch, in place: image k's box (top, left, height, width) = boxes[k] set to 0
    (an empty box erases nothing), one masked fill for the whole batch."""
    i, j, h, w = (b.view(-1, 1, 1) for b in boxes.to(x.device, non_blocking=True).unbind(1))
    rows = torch.arange(x.shape[-2], device=x.device).view(1, -1, 1)
    cols = torch.arange(x.shape[-1], device=x.device).view(1, 1, -1)
    return x.masked_fill_(((rows >= i) & (rows < i + h) & (cols >= j) & (cols < j + w)).unsqueeze(1), 0)


def draw_crop(rrc, height: int, width: int) -> tuple[int, int, int, int, bool]:
    """(top, left, height, width, flip) of a `height` x `width` image: v2.RandomResizedCrop `rrc`'s draw,
    then v2.RandomHorizontalFlip(0.5)'s, from torch's RNG in the preset's order. The size alone decides
    them, so a pipeline that decodes later (reduced, or on the GPU) crops what the preset would."""
    p = rrc.make_params([torch.empty(1, 1, 1, dtype=torch.uint8).expand(3, height, width)])
    flip = bool(torch.rand(1) < 0.5)  # the flip's forward: flipped when rand < p
    return p["top"], p["left"], p["height"], p["width"], flip


class Decoded:
    """A transform of decoded images: `load` decodes a file's bytes (PIL, RGB; a bad file is a DataError
    naming `where`), then applies it with the sample's parameters."""

    def load(self, data: bytes, where: str, params):
        return self(decode(data, where), params)


class Preset(Decoded, Seeded):
    """torchvision's ClassificationPresetTrain / ClassificationPresetEval (PIL backend, transforms.v2), split
    where it costs nothing: the PIL ops and the random erasing's draw in the worker, uint8 out; ToDtype,
    Normalize and the erasing itself once the batch is on the device (a quarter of the bytes to copy).
    Train: RandomResizedCrop -> flip -> data.auto_augment -> [float, Normalize, RandomErasing]; eval: Resize
    -> CenterCrop -> [float, Normalize]. The draws, their order and the results are the preset's."""

    def __init__(self, d, train: bool):
        from torchvision.transforms import v2
        train_crop, resize, crop = crops(d)
        mode = v2.InterpolationMode(d.interpolation)
        ops = [v2.RandomResizedCrop(train_crop, interpolation=mode, antialias=True), v2.RandomHorizontalFlip(0.5),
               *policy(d, mode)] if train else [v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(crop)]
        self.ops = v2.Compose([*ops, v2.PILToTensor()])
        self.finish = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                  v2.Normalize(IMAGENET_MEAN, IMAGENET_STD, inplace=True)])
        self.erase = v2.RandomErasing(p=d.random_erase) if train and d.random_erase > 0 else None
        self.size = train_crop if train else crop
        self.resize, self.crop, self.interpolation = resize, crop, d.interpolation
        super().__init__(self.worker, train)

    def worker(self, img):
        return self.erased(self.ops(img))

    def erased(self, x: torch.Tensor):
        """x, or (x, its erasing box) when data.random_erase > 0: RandomErasing's draws after the ops'."""
        return x if self.erase is None else (x, torch.tensor(self.erase_box(x.shape[-1])))

    def erase_box(self, side: int) -> tuple[int, int, int, int]:
        """The random erasing's (top, left, height, width) for a `side` x `side` image, drawn from torch's RNG
        as v2.RandomErasing.forward draws it (its size alone decides); (0, 0, 0, 0) = not erased."""
        box = (0, 0, 0, 0)
        if torch.rand(1) < self.erase.p:  # the forward's draw, then its parameters
            p = self.erase.make_params([torch.empty(1, 1, 1, dtype=torch.uint8).expand(3, side, side)])
            box = (p["i"], p["j"], p["h"], p["w"]) if p["v"] is not None else box  # None: no box fitted
        return box

    def on_device(self, x) -> torch.Tensor:
        x, boxes = x if isinstance(x, (list, tuple)) else (x, None)
        # Elementwise, so a batch gets each image's values; in place on the fresh float batch (a second
        # batch-sized tensor costs more than the arithmetic on a CPU).
        x = self.finish(x)
        return x if boxes is None else erase_boxes(x, boxes)

    def spec(self) -> dict:
        """How an eval image becomes the model's input, for --export."""
        return dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=self.resize, center_crop=self.crop,
                    interpolation=self.interpolation)


class SquareCrop(Decoded):
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
