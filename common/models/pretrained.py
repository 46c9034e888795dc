"""torchvision's pretrained ImageNet weights from the local torch hub cache (recipes/imagenet.py model.pretrained).

The file is the one torchvision itself would download, under its own name, in
torch.hub.get_dir()/checkpoints/ (by default ~/.cache/torch/hub/checkpoints; $TORCH_HOME/hub/checkpoints
when TORCH_HOME is set). Compute nodes are often offline: a missing file stops the run with its exact
name, directory and URL. With model.pretrained_download=true rank 0 downloads it there first (checksum
verified by torch.hub), the way torchvision does on a connected machine.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torchvision

from common import dist
from common.config import UserError
from common.models.matching import load_matching
from common.userfiles import tensors, torch_load


def weights_file(name: str) -> tuple[Path, str, str]:
    """(path in the hub cache, URL, torchvision's weights name) of the model's DEFAULT weights."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    directory = Path(torch.hub.get_dir()) / "checkpoints"
    return directory / os.path.basename(urlparse(weights.url).path), weights.url, str(weights)


def load_pretrained(model: nn.Module, name: str, download: bool) -> list[str]:
    """Load torchvision's weights for `name` into model (a head of another shape keeps its fresh init);
    the report (what was loaded, what re-initialised) is printed by rank 0 and returned."""
    path, url, label = weights_file(name)
    if not path.exists() and download:
        dist.on_main(lambda: download_weights(url, path))  # the others wait for the file
    if not path.exists():
        raise UserError(f"model.pretrained=true needs torchvision's {label} weights: put the file {path.name} in "
                        f"{path.parent}/ (from {url}; torch.hub.get_dir() decides the directory, set TORCH_HOME to "
                        "move it), or set model.pretrained_download=true on a machine with internet, or "
                        "model.pretrained=false")
    fix = f"delete it and fetch it again from {url}"
    what = "model.pretrained: the weights file"
    weights = tensors(torch_load(path, what, fix), what, path, "the file", fix)
    report = load_matching(model, weights, f"{label} ({path})")
    if dist.rank() == 0:
        print("model.pretrained: " + "\n".join(report), flush=True)
    return report


def download_weights(url: str, path: Path) -> None:
    """torchvision's file into the hub cache, its checksum checked; any failure is one UserError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=_hash_prefix(path.name))
    except Exception as e:  # URLError, HTTPError, a checksum mismatch: one message
        raise UserError(f"model.pretrained_download: downloading {url} failed ({type(e).__name__}: {e}); put "
                        f"{path.name} in {path.parent}/ by hand") from None


def _hash_prefix(filename: str) -> str | None:
    """torchvision file names end in the first digits of their sha256 (resnet18-f37072fd.pth)."""
    stem = filename.rsplit(".", 1)[0]
    tail = stem.rsplit("-", 1)[-1]
    return tail if "-" in stem and all(c in "0123456789abcdef" for c in tail) and len(tail) >= 6 else None
