"""`--export RUN_DIR_OR_CHECKPOINT [--to FILE] [--weights ema|raw]`: one self-contained weight file.

The file holds the recipe's inference model (a classifier's `net`, a GAN's `G`) as a plain
state_dict (no DDP/DeepSpeed/compile prefixes, ZeRO partitions gathered) and what inference needs:
the recipe, the resolved config (model section included), the input the model was trained on
(shape, normalisation, padding or resize/crop), the class count and names where known, the step,
the checkpoint and which weights (EMA or raw). `.safetensors` (default) keeps the metadata as JSON
under the "dtrain" key of the header; `.pt` is `{"state_dict", "meta"}` for torch.load(weights_only=True).

Loading it back (README, "After training"): `load_model(path, task)` -> (model in eval mode, Exported),
with `Exported.preprocess(uint8 images)` applying the training normalisation.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from common import dist
from common.config import ConfigError, UserError, from_dict, to_dict
from common.lifecycle.source import build_data, checkpoint_weights, open_source
from common.formats.checkpoint import MANIFEST
from common.formats.writes import write_failure
from common.userfiles import damaged, expect, fields, tensors, torch_load

FORMAT = 1
SUFFIXES = (".safetensors", ".pt", ".pth")
META = {"recipe": str, "model": str, "weights": str, "step": int}  # what every reader of the metadata indexes
CLASS_NAMES = {  # for the datasets read by name; ImageFolder trees name their classes by folder
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


def input_spec(cfg, loaders) -> dict:
    """What the model's input is, so inference can reproduce it: shape, and how uint8 pixels became it."""
    spec = {"shape": list(loaders.shape), "scale": "uint8 / 255, then (x - mean) / std per channel"}
    ev = loaders.eval
    if hasattr(ev, "mean"):  # in-memory tensors (common/data/memory.py)
        spec.update(mean=ev.mean.flatten().tolist(), std=ev.std.flatten().tolist(),
                    pad_to=getattr(cfg.data, "pad_to", 0))
        if cfg.data.name == "folder":  # image files converted as common/data/datasets.py's read_folder does
            spec["resize"] = "PIL.ImageOps.fit to H x W (bicubic, centre crop), grey for C=1, RGB for C=3"
        return spec
    t = getattr(getattr(ev, "ds", None), "transform", None)  # image files (common/data/folder.py)
    if t is not None and hasattr(t, "t"):  # classification presets: resize, center crop, normalise
        from common.data.folder import IMAGENET_MEAN, IMAGENET_STD
        size = cfg.data.image_size
        spec.update(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=round(size / 0.875), center_crop=size)
    else:  # the GANs' squares in [-1, 1]
        spec.update(mean=[0.5] * loaders.shape[0], std=[0.5] * loaders.shape[0])
    return spec


def default_path(src, recipe: str, which: str) -> Path:
    where = src.run_dir / "export" if src.run_dir else src.ckpt.parent
    return where / f"{recipe}-{src.name}-{which}.safetensors"


def run(task, cli) -> dict:
    """The --export command (every rank takes part; rank 0 writes)."""
    from common.entry import runtime

    to = cli.to
    if to is not None and to.suffix not in SUFFIXES:
        raise ConfigError(f"--to {to}: the file must end in .safetensors (default) or .pt; e.g. --to {to.with_suffix('.safetensors')}")
    src = open_source(cli)
    cfg = src.cfg
    if hasattr(cfg, "eval") and hasattr(cfg.eval, "classifier"):
        cfg.eval.classifier = "none"  # a GAN's FD judge is for evaluation; exporting needs only the data's shape
    with runtime(cfg) as rt:
        weights, which = checkpoint_weights(src.ckpt, src.sd, cli.weights)
        path = to or default_path(src, cli.recipe, which)
        on_main(rt, lambda: check_destination(path, src, cli.replace, made=to is None))
        if src.ignored:
            rt.log(f"--export ignores training settings: {', '.join(src.ignored)}")
        loaders = build_data(task, src, rt)
        name = task.exported
        classes = getattr(loaders, "classes", None) or CLASS_NAMES.get(getattr(cfg.data, "name", ""))
        meta = {"format": FORMAT, "recipe": cli.recipe, "model": name, "weights": which, "step": src.sd["step"],
                "checkpoint": str(src.ckpt), "config": to_dict(cfg), "input": input_spec(cfg, loaders),
                "num_classes": loaders.num_classes, "classes": classes}
        on_main(rt, lambda: write_export(path, weights[name], meta))
        rt.log(f"exported '{name}' ({which} weights) of {src.ckpt}, {src.why}, to {path}")
    return {}


def on_main(rt, work) -> None:
    """Rank 0 runs `work`; every rank raises the UserError it raised (the same exit code on every rank)."""
    error = None
    if rt.is_main:
        try:
            work()
        except UserError as e:
            error = str(e)
    error = dist.broadcast_object(error)
    if error:
        raise UserError(error)


def check_destination(path: Path, src, replace: bool, made: bool) -> None:
    """Refuse a destination inside a checkpoint (or the run's checkpoints/ folder), an existing file
    unless `replace`, and one whose directory is missing (`made`: the default path, whose export/
    folder is created)."""
    checkpoints = (src.run_dir / "checkpoints").resolve() if src.run_dir else None
    for parent in path.resolve().parents:
        if any((parent / f).exists() for f in ("state.pt", MANIFEST)) or parent == checkpoints:
            raise UserError(f"--to {path} is inside {parent}, which holds the run's checkpoints (an export there "
                            "would replace or sit among them); choose a file outside it, e.g. the default (drop --to)")
    if path.is_dir():
        raise UserError(f"--to {path} is a directory; name a file in it, e.g. --to {path / 'model.safetensors'}")
    if path.exists() and not replace:
        raise UserError(f"{path} exists; add --overwrite to replace it, or choose another file with --to FILE")
    if not made and not path.parent.is_dir():
        raise UserError(f"--to {path}: the directory {path.parent} does not exist; create it or choose another "
                        "file with --to FILE")


def write_export(path: Path, weights: dict, meta: dict) -> None:
    """Atomically (temp file, then rename) write weights + meta as .safetensors or .pt by path's suffix.
    The file gets the mode the umask gives any new file (open(2) with 0o666), whatever the format."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # Own, contiguous storage per tensor: safetensors refuses shared or strided views.
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            if path.suffix == ".safetensors":
                from safetensors.torch import save
                f.write(save(plain, metadata={"dtrain": json.dumps(meta)}))
            else:
                torch.save({"state_dict": plain, "meta": meta}, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except Exception as e:
        reason = write_failure(e, path.parent)
        if reason is None:
            raise
        raise UserError(f"could not write {path}: {reason}; nothing was replaced. Free space or fix permissions "
                        "there, or choose another file with --to FILE") from None
    finally:
        if tmp.exists():  # a failed write's leftover (false, not an error, when the directory is unusable)
            tmp.unlink()


def is_export(path: Path) -> bool:
    return Path(path).is_file() and Path(path).suffix in SUFFIXES and Path(path).name != "state.pt"


def read_export(path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict, meta) of a file written by --export; a damaged file or one that --export did not
    write is a DamagedFile naming it."""
    path, what = Path(path), "the weight file"
    fix = "give a file written by --export: `python recipes/<name>.py --export RUN_DIR --to FILE`"
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                text = (f.metadata() or {}).get("dtrain")
                weights = {k: f.get_tensor(k) for k in f.keys()}
            meta = json.loads(expect(text, str, what, path, "its 'dtrain' metadata (written by --export)", fix))
        except Exception as e:  # SafetensorError, OSError, JSONDecodeError: all mean a damaged file
            if isinstance(e, UserError):
                raise
            raise damaged(what, path, e, fix) from None
    else:
        blob = fields(torch_load(path, what, fix), {"state_dict": dict, "meta": dict}, what, path, "the file", fix)
        weights, meta = blob["state_dict"], blob["meta"]
    fields(meta, META, what, path, "its metadata", fix)
    return tensors(weights, what, path, "its weights", fix), meta


@dataclass
class Exported:
    """What load_model returns beside the model: the metadata and the config it describes."""
    meta: dict
    config: object  # the recipe's Config dataclass, as trained

    @property
    def classes(self) -> list[str] | None:
        return self.meta["classes"]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [N, C, H, W] of the training data's size -> the model's input, as in training
        (zero padding to data.pad_to, scale to [0, 1], per-channel mean/std). Image files take
        torchvision's Resize(meta['input']['resize']) + CenterCrop first."""
        from common.data.memory import _pad
        spec = self.meta["input"]
        x = _pad(images, spec.get("pad_to", 0)).float() / 255
        mean, std = (torch.tensor(spec[k], device=x.device).view(1, -1, 1, 1) for k in ("mean", "std"))
        return (x - mean) / std


def load_model(path, task, device="cpu"):
    """(model with the exported weights, in eval mode on `device`, Exported) for a recipe's task:
    the model is built by the recipe's own code from the config stored in the file."""
    weights, meta = read_export(path)
    fields(meta, {"config": dict, "input": dict}, "the weight file", path, "its metadata", "export it again with --export")
    recipe = Path(task.script).stem
    if meta["recipe"] != recipe:
        raise UserError(f"{path} holds a '{meta['recipe']}' model; load it with that recipe's task, not {recipe}'s")
    cfg = from_dict(task.Config, meta["config"])
    shape = SimpleNamespace(shape=tuple(meta["input"]["shape"]), num_classes=meta["num_classes"])
    model = task.build_models(cfg, shape)[meta["model"]]
    model.load_state_dict(weights)
    return model.to(device).eval(), Exported(meta, cfg)
