"""data.decode=fast: torchvision's classification presets (transforms.py Preset) on JPEGs, decoded reduced.

A JPEG's header gives its size; the sample's RandomResizedCrop and flip are drawn from it (transforms.draw_crop:
the pil path's boxes for the same seeds). libjpeg-turbo (simplejpeg) then decodes at the smallest power-of-two
DCT scale (1/2, 1/4, 1/8) that keeps the crop at least the output size, and torch's antialiased uint8
interpolation (PIL's filters, vectorised) resizes the crop. Eval: the shorter side to data.val_resize the same
way, then the centre crop. data.auto_augment runs on PIL images and the erasing is drawn as in Preset; uint8 out.
A file simplejpeg does not decode to RGB as PIL does (PNG, grey, CMYK, one it refuses) takes Preset's PIL
path, which decodes it or names it in a DataError. Against the pil path's output: the resize rounds differently
(1-2 levels of 255), training decodes with the fast IDCT (~1 level on average), and a reduced decode filters
by DCT scaling with the crop rounded to its grid (at most d / 2 pixels of the full image).
"""
from __future__ import annotations

import math

import torch

from common.data.transforms import Preset, Seeded, draw_crop

REDUCTIONS = (8, 4, 2)  # 1/8, 1/4, 1/2: libjpeg-turbo's other M/8 scales decode slower than full size
# Training: libjpeg-turbo's fast integer IDCT and plain chroma upsampling, ~8% more images per core for a mean
# change of ~1 level of 255 after the resize (bench/README.md); eval decodes accurately.
TRAIN_FLAGS = dict(fastdct=True, fastupsample=True)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a YCbCr JPEG that PIL would not refuse as too large; None for any other file."""
    import simplejpeg
    from PIL import Image
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    bomb = Image.MAX_IMAGE_PIXELS is not None and height * width > Image.MAX_IMAGE_PIXELS  # PIL warns or refuses
    return (height, width) if colorspace == "YCbCr" and not bomb else None


def reduction(height: int, width: int, out_h: int, out_w: int, reductions=REDUCTIONS) -> float:
    """The largest d of `reductions` (8 / M) with a height x width region still at least out_h x out_w at 1/d,
    else 1. A region under 8 pixels is never reduced: libjpeg's ceil(size * M / 8) would not tell M apart."""
    return next((d for d in reductions if height >= max(out_h * d, 8) and width >= max(out_w * d, 8)), 1)


def decode(data: bytes, height: int, width: int, d: float, **flags):
    """The JPEG's RGB pixels at 1/d (libjpeg's ceil(size / d)), [H, W, 3] uint8; None when simplejpeg refuses it.
    flags: simplejpeg's fastdct, fastupsample."""
    import simplejpeg
    least = {} if d == 1 else dict(min_height=math.ceil(height / d), min_width=math.ceil(width / d))
    try:
        return torch.from_numpy(simplejpeg.decode_jpeg(data, **least, **flags))
    except ValueError:
        return None


def resized(x: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """[H, W, 3] uint8 resized to [height, width, 3] (a view of channels-last memory): torch's antialiased
    uint8 kernel, PIL's filter to within its rounding."""
    x = x.permute(2, 0, 1).unsqueeze(0)  # channels-last [1, 3, H, W]: the vectorised uint8 path
    return torch.nn.functional.interpolate(x, size=(height, width), mode=mode, antialias=True)[0].permute(1, 2, 0)


class FastJpeg(Preset):
    """Preset (draws, on_device, size, spec) with its JPEGs decoded reduced and resized by torch."""
    reductions, train_flags = REDUCTIONS, TRAIN_FLAGS  # bench/jpeg_cost.py measures the other choices

    def __init__(self, d, train: bool):
        from torchvision.transforms import v2
        super().__init__(d, train)
        ops = self.ops.transforms  # train: RandomResizedCrop, flip, data.auto_augment's policy ops, PILToTensor
        self.rrc = ops[0] if train else None
        self.augment = v2.Compose(ops[2:-1]) if train and len(ops) > 3 else None
        self.fast = Seeded(self.fast_worker, train)  # seeded as Preset's worker: the same draws

    def load(self, data: bytes, where: str, params):
        size = jpeg_size(data)
        x = None if size is None else self.fast((data, *size), params)
        return super().load(data, where, params) if x is None else x  # None: Preset's PIL path

    def box(self, height: int, width: int) -> tuple[int, int, int, int, bool, float]:
        """(top, left, height, width, flip, d): the sample's crop and flip as the pil path draws them, on the
        image decoded at 1/d. At d > 1 the crop's corner and sides are rounded to that grid (at most d / 2
        pixels of the full image each), its sides still at least the output's."""
        top, left, h, w, flip = draw_crop(self.rrc, height, width)
        d = reduction(h, w, self.size, self.size, self.reductions)
        if d > 1:
            h, w = round(h / d), round(w / d)
            top, left = min(round(top / d), math.ceil(height / d) - h), min(round(left / d), math.ceil(width / d) - w)
        return top, left, h, w, flip, d

    def fast_worker(self, job):
        data, height, width = job
        if not self.train:
            return self.centre(data, height, width)
        top, left, h, w, flip, d = self.box(height, width)
        img = decode(data, height, width, d, **self.train_flags)
        if img is None:
            return None
        x = resized(img[top:top + h, left:left + w], self.size, self.size, self.interpolation)
        x = x.flip(1) if flip else x
        if self.augment is None:
            return self.erased(x.permute(2, 0, 1))
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor
        return self.erased(pil_to_tensor(self.augment(Image.fromarray(x.numpy()))))  # the preset's PIL policy ops

    def centre(self, data: bytes, height: int, width: int):
        """Resize (shorter side to data.val_resize, as v2.Resize sizes it) and CenterCrop, decoded reduced."""
        r = self.resize
        rh, rw = (int(r * height / width), r) if width <= height else (r, int(r * width / height))
        img = decode(data, height, width, reduction(height, width, rh, rw, self.reductions))
        if img is None:
            return None
        top, left = int(round((rh - self.crop) / 2.0)), int(round((rw - self.crop) / 2.0))  # as v2.CenterCrop
        return resized(img, rh, rw, self.interpolation)[top:top + self.crop, left:left + self.crop].permute(2, 0, 1)
