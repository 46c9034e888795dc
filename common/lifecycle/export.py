"""`--export RUN_DIR_OR_CHECKPOINT [--to FILE] [--weights ema|raw]`: one self-contained weight file.

The file holds the recipe's inference model (a classifier's `net`, a GAN's `G`) as a plain
state_dict (no DDP/DeepSpeed/compile prefixes, ZeRO partitions gathered) and what inference needs:
the recipe, the resolved config (model section included), the input the model was trained on
(shape, normalisation, padding or resize/crop), the class count and names where known, the step,
the checkpoint and which weights (EMA or raw). `.safetensors` (default) keeps the metadata as JSON
under the "dtrain" key of the header; `.pt` is `{"state_dict", "meta"}` for torch.load(weights_only=True).
`.pt2` and `.onnx` are programs checked against eager, with the metadata beside them (deploy_formats.py).

Loading it back (README, "After training"): `load_model(path)` -> (model in eval mode, Exported), the model
built by the recipe the file names (from recipes/ beside this package, or the `task` given), with
`Exported.preprocess(images)` applying the run's evaluation transform (common/lifecycle/preprocess.py).
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace

import torch

from common import dist
from common.config import ConfigError, UserError, from_dict, to_dict
from common.formats.checkpoint import MANIFEST
from common.formats.export import FORMAT, SUFFIXES, read_export, write_export
from common.lifecycle import deploy_formats, deployed
from common.lifecycle.inputs import check_file
from common.lifecycle.preprocess import Preprocess
from common.lifecycle.source import build_data, open_source
from common.train.runtime import runtime
from common.train.weights import checkpoint_weights
from common.userfiles import fields

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
    if hasattr(ev, "mean"):  # in-memory tensors (common/data/classifier_data.py)
        spec.update(mean=ev.mean.flatten().tolist(), std=ev.std.flatten().tolist(),
                    pad_to=getattr(cfg.data, "pad_to", 0))
        if cfg.data.name in ("folder", "shards"):  # image files converted as common/data/datasets.py's read_folder does
            spec["resize"] = "PIL.ImageOps.fit to H x W (bicubic, centre crop), grey for C=1, RGB for C=3"
        return spec
    t = getattr(getattr(ev, "ds", None), "transform", None)  # image files (common/data/streaming.py)
    if hasattr(t, "spec"):  # classification presets: resize, center crop, interpolation, normalise
        spec.update(t.spec())
    else:  # the GANs' squares in [-1, 1]
        spec.update(mean=[0.5] * loaders.shape[0], std=[0.5] * loaders.shape[0])
    return spec


def describe(task, src, loaders, recipe: str, which: str) -> dict:
    """What an exported model is, for loading it and preprocessing its input: the export metadata
    (format, recipe, which model and weights, step, checkpoint, config, input spec, classes)."""
    cfg = src.cfg
    classes = getattr(loaders, "classes", None) or CLASS_NAMES.get(getattr(cfg.data, "name", ""))
    return {"format": FORMAT, "recipe": recipe, "model": task.exported, "weights": which, "step": src.sd["step"],
            "checkpoint": str(src.ckpt), "config": to_dict(cfg), "input": input_spec(cfg, loaders),
            "num_classes": loaders.num_classes, "classes": classes}


def default_path(src, recipe: str, which: str) -> Path:
    where = src.run_dir / "export" if src.run_dir else src.ckpt.parent
    return where / f"{recipe}-{src.name}-{which}.safetensors"


def run(task, cli) -> dict:
    """The --export command (every rank takes part; rank 0 writes)."""
    to = cli.to
    if to is not None and to.suffix not in SUFFIXES + deployed.SUFFIXES:
        raise ConfigError(f"--to {to}: the file must end in .safetensors (default), .pt, .pt2 (torch.export) or "
                          f".onnx; e.g. --to {to.with_suffix('.safetensors')}")
    if to is not None:
        deploy_formats.require(to)
    src = open_source(cli)
    cfg = src.cfg
    if hasattr(cfg, "eval") and hasattr(cfg.eval, "classifier"):
        cfg.eval.classifier = "none"  # a GAN's FD judge is for evaluation; exporting needs only the data's shape
    with runtime(cfg) as rt:
        weights, which = checkpoint_weights(src.ckpt, src.sd, cli.weights)
        path = to or default_path(src, cli.recipe, which)
        dist.on_main(lambda: check_destination(path, src, cli.replace, made=to is None))
        if src.ignored:
            rt.log(f"--export ignores training settings: {', '.join(src.ignored)}")
        loaders = build_data(task, src, rt)
        name = task.exported
        meta = describe(task, src, loaders, cli.recipe, which)
        if path.suffix in deployed.SUFFIXES:
            dist.on_main(lambda: deploy_formats.export_program(task, cfg, loaders, weights[name], path, meta, rt.log))
        else:
            dist.on_main(lambda: write_export(path, weights[name], meta))
        rt.log(f"exported '{name}' ({which} weights) of {src.ckpt}, {src.why}, to {path}")
    return {}


def check_destination(path: Path, src, replace: bool, made: bool) -> None:
    """Refuse a destination inside a checkpoint (or the run's checkpoints/ folder), an existing file
    unless `replace`, and one whose directory is missing (`made`: the default path, whose export/
    folder is created)."""
    checkpoints = (src.run_dir / "checkpoints").resolve() if src.run_dir else None
    for parent in path.resolve().parents:
        if any((parent / f).exists() for f in ("state.pt", MANIFEST)) or parent == checkpoints:
            raise UserError(f"--to {path} is inside {parent}, which holds the run's checkpoints (an export there "
                            "would replace or sit among them); choose a file outside it, e.g. the default (drop --to)")
    check_file(path, replace, made, "model.safetensors")


@dataclass
class Exported:
    """What load_model returns beside the model: the metadata and the config it describes."""
    meta: dict
    config: object  # the recipe's Config dataclass, as trained

    @property
    def classes(self) -> list[str] | None:
        return self.meta["classes"]

    @cached_property
    def transform(self) -> Preprocess:
        return Preprocess.from_meta(self.meta)

    def preprocess(self, images, device="cpu") -> torch.Tensor:
        """Images -> the model's input, float [N, C, H, W] on `device`: the run's evaluation transform exactly
        (common/lifecycle/preprocess.py). images: image paths, their bytes, PIL images (each converted as
        evaluation converts a file: resize and centre crop, grey or RGB), or a uint8 tensor [N, C, H, W] (of
        the data's own size for a model trained on a dataset by name: another size is a UserError)."""
        return self.transform(images, device)


RECIPES = Path(__file__).resolve().parents[2] / "recipes"  # the repository's recipes, beside common/


def recipe_task(recipe: str, path):
    """The `task` of recipes/<recipe>.py, its module loaded once (not run as a script)."""
    script = RECIPES / f"{recipe}.py"
    name = f"dtrain_recipes.{recipe}"
    if name not in sys.modules:
        if not script.is_file():
            raise UserError(f"{path} holds a '{recipe}' model and {script} does not exist: pass the recipe's task, "
                            "load_model(path, task=module.task), where module is your recipe")
        spec = importlib.util.spec_from_file_location(name, script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it runs
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name].task


def load_model(path, task=None, device="cpu"):
    """(model with the exported weights, in eval mode on `device`, Exported): the model is built by the
    recipe's own code (its `task`; None: recipes/<the recipe the file names>.py) from the config stored in the file."""
    weights, meta = read_export(path)
    fields(meta, {"config": dict, "input": dict}, "the weight file", path, "its metadata", "export it again with --export")
    task = task or recipe_task(meta["recipe"], path)
    recipe = Path(task.script).stem
    if meta["recipe"] != recipe:
        raise UserError(f"{path} holds a '{meta['recipe']}' model; load it with that recipe's task, not {recipe}'s")
    cfg = from_dict(task.Config, meta["config"])
    shape = SimpleNamespace(shape=tuple(meta["input"]["shape"]), num_classes=meta["num_classes"])
    model = task.build_models(cfg, shape)[meta["model"]]
    model.load_state_dict(weights)
    return model.to(device).eval(), Exported(meta, cfg)
