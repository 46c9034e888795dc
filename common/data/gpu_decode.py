"""data.decode=gpu: JPEG files decoded a batch at a time on the training device (nvJPEG through
torchvision.io.decode_jpeg), then cropped, resized, flipped and normalised there.

The workers read a file's header only (its size; a non-JPEG or unreadable header is a DataError naming
it), draw the sample's crop, flip and erasing box under its seed as Preset does (data.decode=pil's boxes
for the same seed), and pass on the bytes: a batch is a JpegBatch. On the device: decode (a file that fails
is named), per image crop -> resize -> flip, then Preset's float, Normalize and erasing; eval: Resize ->
CenterCrop. data.auto_augment is refused. It decodes on any device (torchvision decodes on the CPU too:
tests, the benchmark's CPU check); training, --dry-run and --evaluate call `require_cuda` first.
"""
from __future__ import annotations

import dataclasses
import io
import re
import warnings

import torch

from common.config import ConfigError
from common.data.files import DataError
from common.data.transforms import Preset, draw_crop

JPEG_FORMATS = {"JPEG", "MPO"}  # MPO: a camera's multi-picture JPEG, whose first picture is a plain JPEG


def require_cuda(d, device: torch.device) -> None:
    """data.decode=gpu on a device other than CUDA is a ConfigError (before any file is read)."""
    if getattr(d, "decode", None) == "gpu" and torch.device(device).type != "cuda":
        raise ConfigError(f"data.decode=gpu decodes JPEGs with nvJPEG on a CUDA GPU, and this run's device is "
                          f"{torch.device(device).type}: run on a CUDA GPU, or set data.decode=pil")


def jpeg_size(data: bytes, where: str) -> tuple[int, int]:
    """(height, width) from a JPEG's header, without decoding it."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as f:  # reads the markers up to the frame header only
            kind, (width, height) = f.format, f.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {where} ({type(e).__name__}: {e}); delete or replace the file") from None
    if kind not in JPEG_FORMATS:
        raise DataError(f"{where} is a {kind} image, and data.decode=gpu decodes JPEGs only: convert it to JPEG, "
                        "or set data.decode=pil")
    return height, width


@dataclasses.dataclass
class JpegBatch:
    """A batch as the workers send it: the files' bytes end to end in one 1-D uint8 tensor on the host (where
    nvJPEG reads them; one tensor, not one a file: each costs a file descriptor between processes) and each
    file's length; per image (top, left, height, width, flip, erasing top, left, height, width) for training
    (None for eval); the files' names for errors; the device to decode on (set by `to`)."""
    data: torch.Tensor
    sizes: list[int]
    params: torch.Tensor | None
    where: list[str]
    device: torch.device = torch.device("cpu")

    def files(self) -> list[torch.Tensor]:
        return list(self.data.split(self.sizes))

    def to(self, device, non_blocking: bool = False) -> JpegBatch:
        return dataclasses.replace(self, device=torch.device(device))

    def pin_memory(self) -> JpegBatch:  # the DataLoader's pinning thread
        return dataclasses.replace(self, data=self.data.pin_memory())


def decode_jpegs(data: list[torch.Tensor], where: list[str], device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 [3, H, W] images on `device`, decoded as one batch; a file that does not decode is a
    DataError naming it (the batch call does not say which failed, so the files are then tried one by one)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision points to TorchCodec, not a dependency
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            for one, name in zip(data, where):
                try:
                    decode_jpeg([one], mode=ImageReadMode.RGB, device=device)
                except RuntimeError as e:
                    reason = re.sub(r"^.*\.(cpp|cu):\d+, ", "", str(e).strip().splitlines()[-1])
                    raise DataError(f"cannot decode image {name} ({reason}); delete or replace the file") from None
            raise


class GpuDecode(Preset):
    """Preset's interface (draw, load, on_device, size, spec) and results, with the decoding and the
    geometric ops moved from the workers to the device; `collate` keeps the files' bytes as a list."""

    def __init__(self, d, train: bool):
        if train and d.auto_augment != "none":
            raise ConfigError(f"data.auto_augment={d.auto_augment} runs on decoded images in the workers, and "
                              "data.decode=gpu decodes on the device: set data.auto_augment=none, or data.decode=pil")
        super().__init__(d, train)
        self.first = self.ops.transforms[0]  # the preset's RandomResizedCrop (train) or Resize (eval)

    def load(self, data: bytes, where: str, params):
        size = jpeg_size(data, where)
        drawn = self(size, params) if self.train else None  # Seeded: the draws under the sample's seed
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), drawn, where

    def worker(self, size: tuple[int, int]) -> torch.Tensor:
        """Preset.worker's draws in its order, from the image's size alone."""
        crop = draw_crop(self.first, *size)
        box = self.erase_box(self.size) if self.erase is not None else (0, 0, 0, 0)
        return torch.tensor([*crop, *box])

    @staticmethod
    def collate(samples: list) -> tuple[JpegBatch, torch.Tensor]:
        items, labels = zip(*samples)
        data, params, where = zip(*items)
        params = None if params[0] is None else torch.stack(params)
        return JpegBatch(torch.cat(data), [len(d) for d in data], params, list(where)), torch.tensor(labels)

    def on_device(self, x: JpegBatch) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F
        mode, rows = self.first.interpolation, x.params[:, :5].tolist() if self.train else None
        out = []
        for k, img in enumerate(decode_jpegs(x.files(), x.where, x.device)):
            if self.train:  # RandomResizedCrop: the drawn box resized to the crop, then the flip
                top, left, height, width, flip = rows[k]
                img = F.resize(img[None, :, top:top + height, left:left + width].float(), [self.size, self.size],
                               interpolation=mode, antialias=True)
                out.append(img.flip(-1) if flip else img)
            else:
                img = F.resize(img[None].float(), [self.resize], interpolation=mode, antialias=True)
                out.append(F.center_crop(img, [self.crop]))
        # F.resize's arithmetic on a CUDA uint8 image (to float, resize, round, back), with the rounding and the
        # cast done once a batch rather than once an image.
        out = torch.cat(out).clamp_(0, 255).round_().to(torch.uint8)
        return super().on_device(out if self.erase is None else (out, x.params[:, 5:]))
