"""timm models by name (recipes/imagenet.py model.name=timm:<name>), and their pretrained weights, offline.

build() is timm.create_model with this run's class count and input channels; a model timm declares
fixed to one input size (ViT, Swin: pretrained_cfg.fixed_input_size) is built for this run's training crop
and takes any other (dynamic_img_size).
An unknown name is a UserError naming the closest of timm's names. Pretrained weights are read from the
cache timm itself fills: the Hugging Face hub cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
~/.cache/huggingface/hub: models--timm--<name>/snapshots/<revision>/model.safetensors), else timm's
torch hub cache (torch.hub.get_dir()/checkpoints/). Compute nodes are often offline: a missing file stops
the run naming the file and the directory; with download=true rank 0 fetches it there first. timm's
own loader then adapts the weights (position embeddings to the image size, a head of another shape left fresh).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import safetensors.torch
import torch
import torch.nn as nn

from common import dist
from common.config import UserError
from common.models.pretrained import download_weights
from common.userfiles import damaged, first_line, tensors, torch_load

PREFIX = "timm:"
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm reads from a hub repo, in its order


def close_names(name: str, n: int = 5) -> list[str]:
    """timm's names nearest to `name`: those containing it, else the most similar spellings."""
    import timm  # here and below: seconds to import, paid only by the runs of timm models
    return timm.list_models(f"*{name}*")[:n] or difflib.get_close_matches(name, timm.list_models(), n=n, cutoff=0.5)


def build(name: str, in_shape, num_classes: int, drop_path: float, pretrained: bool, download: bool) -> nn.Module:
    """timm's `name` (an architecture, optionally .tag of its weights) for inputs of in_shape (C, H, W)."""
    import timm
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        near = close_names(arch)
        raise UserError(f"model.name=timm:{name}: timm has no model {arch!r}"
                        + (f"; close matches: {', '.join(near)}" if near else "")
                        + "; timm.list_models() lists them all")
    tags = timm.list_pretrained(f"{arch}.*")
    if name != arch and name not in tags:
        raise UserError(f"model.name=timm:{name}: timm has no weights tagged {name.split('.', 1)[1]!r} for {arch}; "
                        + (f"its tags: {', '.join(t.split('.', 1)[1] for t in tags)}" if tags else "it has none"))
    cfg = timm.models.get_pretrained_cfg(name)
    kw = {"num_classes": num_classes, "in_chans": in_shape[0]}
    if cfg is not None and cfg.fixed_input_size:
        # Built for the training crop, and able to take another (data.val_crop, FixRes): timm resamples
        # the position embeddings to the input; at the training crop the output is the same bit for bit.
        kw.update(img_size=tuple(in_shape[1:]), dynamic_img_size=True)
    if drop_path:
        kw["drop_path_rate"] = drop_path
    if pretrained:
        kw.update(pretrained=True, pretrained_cfg_overlay={"state_dict": read_weights(name, cfg, download)})
    try:
        model = timm.create_model(name, **kw)
    except TypeError as e:  # an architecture without stochastic depth takes no drop_path_rate
        if "drop_path_rate" not in str(e):
            raise
        raise UserError(f"model.drop_path={drop_path}: timm's {arch} has no stochastic depth; set model.drop_path=0") from None
    if pretrained and dist.rank() == 0:
        head = (f"; its classifier ({cfg.classifier}) keeps this run's fresh init: {num_classes} classes, not "
                f"{cfg.num_classes}" if num_classes != cfg.num_classes else "")
        print(f"model.pretrained: loaded timm's {cfg.hf_hub_id or cfg.url} weights{head}", flush=True)
    return model


def hub_cache() -> Path:
    """The directory huggingface_hub caches into, read from the environment now (as it reads it at import)."""
    home = os.environ.get("HF_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"))
    cache = os.environ.get("HF_HUB_CACHE", os.environ.get("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub")))
    return Path(os.path.expanduser(os.path.expandvars(cache)))


def _legacy_file(cfg) -> Path | None:
    """Where timm's torch hub cache keeps the weights of a URL (timm's download_cached_file)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path) if cfg.url else None


def _hub_files(cfg) -> tuple[str, ...]:
    return (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILES


def weights_file(name: str, cfg) -> tuple[Path | None, str]:
    """(the cached weights file of `name` or None, where it is expected)."""
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(f"model.pretrained=true: timm has no pretrained weights for {name}; set model.pretrained=false")
    legacy = _legacy_file(cfg)
    if cfg.hf_hub_id:
        for f in _hub_files(cfg):
            found = huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, f, cache_dir=hub_cache())
            if isinstance(found, str):
                return Path(found), ""
    if legacy is not None and legacy.is_file():
        return legacy, ""
    if cfg.hf_hub_id:
        repo = hub_cache() / f"models--{cfg.hf_hub_id.replace('/', '--')}" / "snapshots" / "<revision>"
        return None, f"{_hub_files(cfg)[0]} of the Hugging Face repo {cfg.hf_hub_id}, in {repo}/"
    return None, f"{legacy.name} (from {cfg.url}) in {legacy.parent}/"


def read_weights(name: str, cfg, download: bool) -> dict[str, torch.Tensor]:
    """The state_dict of timm's weights for `name` from the local cache (rank 0 downloads it when asked)."""
    path, where = weights_file(name, cfg)
    if path is None and download:
        dist.on_main(lambda: fetch(cfg))  # the others wait for the file
        path, where = weights_file(name, cfg)
    if path is None:
        raise UserError(f"model.pretrained=true needs timm's {name} weights: put {where} (set HF_HUB_CACHE or "
                        "HF_HOME to move it; `huggingface-cli download` fetches it), or set "
                        "model.pretrained_download=true on a machine with internet, or model.pretrained=false")
    what, fix = "model.pretrained: the weights file", "delete it and fetch it again (model.pretrained_download=true)"
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(path)
        except Exception as e:  # a truncated or foreign file: a bad file, not a bug
            raise damaged(what, path, e, fix) from None
    return tensors(torch_load(path, what, fix), what, path, "the file", fix)


def fetch(cfg) -> None:
    """Download the weights timm would, into the cache it would use; any failure is one UserError."""
    if not cfg.hf_hub_id:
        return download_weights(cfg.url, _legacy_file(cfg))
    for f in _hub_files(cfg):  # the repo holds one of them
        try:
            huggingface_hub.hf_hub_download(cfg.hf_hub_id, f, cache_dir=hub_cache())
            return None
        except Exception as e:  # offline, a missing repo or file: one message once every name failed
            error = e
    raise UserError(f"model.pretrained_download: downloading {cfg.hf_hub_id} from the Hugging Face hub failed "
                    f"({type(error).__name__}: {first_line(error)}); fetch it on a connected machine into {hub_cache()}")
