"""`Preprocess`: a trained classifier's evaluation transform, for images at inference.

Built from the export metadata alone (common.lifecycle.export.describe: the stored config and input spec);
items are image paths, their bytes, PIL images, or a uint8 tensor [N, C, H, W]; the result is the model's
float input [N, C, H, W], made exactly as the run's evaluation makes it:
- image-file runs (torchvision's presets): the run's own eval transform, image_transform(data, train=False)
  (resize, centre crop, interpolation, normalise; decoded as data.decode says);
- in-memory runs (the MNIST/CIFAR nets): an image converted as training converts a folder's files
  (common/data/datasets.py fit: grey or RGB by C, ImageOps.fit to H x W), padded to data.pad_to and
  normalised with the saved mean/std; a tensor must already be the dataset's C x H x W (else a UserError).
A GAN's input (noise) and a Dataset of your own (its own transform) are not described: from_meta refuses them.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import default_collate

from common.config import UserError
from common.data.classifier_data import _pad, normalised
from common.data.datasets import SHAPES, fit
from common.data.files import DataError, decode
from common.data.folder import image_transform
from common.data.transforms import Preset
from common.formats.export import read_export
from common.userfiles import fields, problem

SIDECAR = ".json"  # model.pt2 -> model.pt2.json, model.onnx -> model.onnx.json: the metadata beside the file
FIX = "export it again with `python recipes/<name>.py --export RUN_DIR --to FILE`"


def read_bytes(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {path} ({e.strerror or e}); check the path") from None


def pil_rgb(img):
    """A PIL image as decode() leaves a file: RGB."""
    return img if img.mode == "RGB" else img.convert("RGB")


def tensor_images(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise UserError(f"preprocess takes a uint8 tensor [N, C, H, W] (pixels 0..255), not {x.dtype} "
                        f"{list(x.shape)}; give image files, their bytes or PIL images otherwise")
    return x


class Preprocess:
    """The evaluation transform of the model the metadata describes: `.shape` (C, H, W of the model's input),
    `.classes` (class names, or "0".."n-1" where the data named none), `__call__(items, device="cpu")`;
    `load(item)` and `batch(samples, device)` are its two halves (one image, so a bad file can be named
    alone; then a batch on the device, where evaluation finishes its batches)."""

    def __init__(self, meta: dict):
        name = f"'{meta.get('recipe')}'" if isinstance(meta, dict) else "described"
        fields(meta, {"input": dict, "config": dict, "num_classes": int}, "the model", name, "its export metadata", FIX)
        spec, data = meta["input"], meta["config"].get("data", {})
        self.shape = tuple(spec["shape"])
        self.classes = list(meta.get("classes") or [str(i) for i in range(meta["num_classes"])])
        if "center_crop" in spec:  # torchvision's presets on image files
            self.kind = Presets(SimpleNamespace(**data))
        elif "pad_to" in spec:  # in-memory uint8 tensors
            self.kind = Fitted(spec, data, self.shape)
        else:
            raise UserError(f"the {meta.get('recipe')} model '{meta.get('model')}' takes no image input the "
                            "metadata describes (a GAN's generator takes noise; a Dataset of your own applies its "
                            "own transform): preprocessing is for the classifiers trained on datasets by name, "
                            "image folders or shards")

    @classmethod
    def from_meta(cls, meta: dict) -> Preprocess:
        return cls(meta)

    @classmethod
    def from_file(cls, path) -> Preprocess:
        """From an export: the metadata in a .safetensors/.pt file, or the JSON beside a .pt2/.onnx file."""
        path = Path(path)
        if path.suffix not in (".pt2", ".onnx"):
            return cls(read_export(path)[1])
        side = path.with_name(path.name + SIDECAR)
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {side}, the metadata of {path} ({problem(side, e)}); {FIX}") from None
        if not isinstance(meta, dict):
            raise UserError(f"{side} holds no metadata object; {FIX}")
        return cls(meta)

    def load(self, item):
        """One image (a path, bytes, a PIL image, or a uint8 tensor [C, H, W]) converted up to the batch
        step; an unreadable file is a DataError naming it."""
        if isinstance(item, (str, Path)):
            return self.kind.file(read_bytes(item), str(item))
        if isinstance(item, (bytes, bytearray, memoryview)):
            return self.kind.file(bytes(item), "<bytes>")
        if isinstance(item, torch.Tensor):
            return self.kind.tensor(tensor_images(item[None])[0])
        if hasattr(item, "convert"):  # a PIL image
            return self.kind.image(pil_rgb(item))
        raise UserError(f"preprocess takes image paths, bytes, PIL images or a uint8 tensor [N, C, H, W], "
                        f"not {type(item).__name__}")

    def batch(self, samples: list, device="cpu") -> torch.Tensor:
        return self.kind.batch(samples, torch.device(device))

    def __call__(self, items, device="cpu") -> torch.Tensor:
        """items: a list of images, one image, or a uint8 tensor [N, C, H, W] -> float [N, C, H, W] on device."""
        if isinstance(items, torch.Tensor):
            items = list(tensor_images(items))
        elif not isinstance(items, (list, tuple)):
            items = [items]
        with ThreadPoolExecutor(4) as pool:  # decoding releases the GIL
            return self.batch(list(pool.map(self.load, items)), device)


class Fitted:
    """In-memory runs: uint8 [C, H, W] as the dataset holds it, then padding and the saved normalisation."""

    def __init__(self, spec: dict, data: dict, shape: tuple):
        name = data.get("name")
        native = {"folder": data.get("folder_shape"), "shards": data.get("folder_shape"),
                  "synthetic": data.get("synthetic_shape")}.get(name) or SHAPES.get(name) or list(shape)
        self.native, self.pad = list(native), spec.get("pad_to", 0)
        self.mean, self.std = (torch.tensor(spec[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
        if tuple(_pad(torch.empty(1, *native), self.pad).shape[1:]) != shape:
            raise UserError(f"the export metadata is inconsistent: data {name} ({native}) padded to {self.pad} is "
                            f"not the input shape {list(shape)}; {FIX}")

    def file(self, data: bytes, where: str) -> torch.Tensor:
        return fit(decode(data, where), self.native)

    def image(self, img) -> torch.Tensor:
        return fit(img, self.native)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        if list(x.shape) != self.native:
            c, h, w = self.native
            raise UserError(f"a uint8 image of {list(x.shape)} for a model trained on {c} x {h} x {w} images: "
                            "give the image file (or a PIL image), which is converted as training converts "
                            "files, or a tensor of that size")
        return x

    def batch(self, samples: list, device: torch.device) -> torch.Tensor:
        x = _pad(torch.stack(samples), self.pad).to(device)
        return normalised(x, self.mean.to(device), self.std.to(device))


class Presets:
    """Image-file runs: the run's eval transform (image_transform(data, train=False)) on files and bytes, as
    its evaluation loader applies it; decoded images (PIL, tensors) through the same preset's PIL ops."""

    def __init__(self, d):
        self.t, self.decoded = image_transform(d, train=False), Preset(d, train=False)

    def file(self, data: bytes, where: str):
        return self.t.load(data, where, None)

    def image(self, img) -> torch.Tensor:
        return self.decoded(img, None)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2.functional import to_pil_image
        if x.shape[0] not in (1, 3):
            raise UserError(f"a uint8 image of {list(x.shape)}: give 1 (grey) or 3 (RGB) channels")
        return self.image(pil_rgb(to_pil_image(x)))

    def batch(self, samples: list, device: torch.device) -> torch.Tensor:
        # As the eval loader: collated (data.decode=gpu keeps the files' bytes), moved, finished on the device.
        # uint8 crops (decode=pil|fast, or decoded images) are finished by the preset: float, Normalize.
        crops = [i for i, s in enumerate(samples) if isinstance(s, torch.Tensor)]
        files = [i for i in range(len(samples)) if i not in set(crops)]
        out = [None] * len(samples)
        for t, idx in ((self.decoded, crops), (self.t, files)):
            if idx:
                x = (getattr(t, "collate", None) or default_collate)([(samples[i], 0) for i in idx])[0]
                for i, row in zip(idx, t.on_device(x.to(device))):
                    out[i] = row
        return torch.stack(out)
