"""Every config key a recipe accepts has an effect: some code outside common/config.py reads it.

Each recipe runs its debug config for two steps in this process while every read of a config
field is recorded, except the reads that only copy the whole config (config.yaml, checkpoints,
TensorBoard hparams) or parse and validate it. A key that is in the schema but never read is a
key that can be set without any effect: the test names it. A few keys are read only under
another setting (a schedule, an optimizer, a launcher); CONDITIONAL lists them with that setting,
and the test checks each such key is read once that setting is on.
"""
import dataclasses
import importlib.util
import sys
import typing
from contextlib import contextmanager

import numpy as np
import pytest

from common.config import schema
from common.entry import run as run_recipe_in_process
from support.images import image_tree
from support.runs import ROOT, load_recipe

RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py"))
NOT_READS = {"_asdict_inner", "asdict", "schema", "apply", "to_dict", "dump_yaml", "validate", "_flat"}

# key -> the override under which it takes effect (checked by a second run with it)
CONDITIONAL = {
    "train.epochs": "train.max_steps=0",
    "optim.momentum": "optim.name=sgd",
    "optim.nesterov": "optim.name=sgd",
    "optim.betas": "optim.name=adam",
    "optim.min_lr_ratio": "optim.schedule=cosine",
    "optim.step_milestones": "optim.schedule=step",
    "optim.step_gamma": "optim.schedule=step",
    "deepspeed_config": "engine=deepspeed",
    "fsdp.reshard_after_forward": "engine=fsdp",
    "fsdp.cpu_offload": "engine=fsdp",
    "data.download": "data.name=mnist",  # read when the files are missing (then: a clear error)
    "data.root": "data.name=mnist",
    "data.workers": "data.name=folder data.root={tree}",
    "data.direction": "data.name=folder data.root={tree}",
    "data.folder_shape": "data.root={tree} data.name=folder",  # the classifiers' folder source (another recipe than the GANs')
    "model.pretrained_download": "model.pretrained=true",  # read when the weights file is missing
    "log.project": "log.backends=[mlflow]",  # W&B reads it too; MLflow runs offline with no setup
    "log.mlflow_uri": "log.backends=[mlflow]",
}


@contextmanager
def record_reads(cfg_cls):
    """Patch __getattribute__ of every dataclass in the schema tree to record dotted field reads."""
    reads, classes = set(), set()

    def walk(cls):
        classes.add(cls)
        for tp in typing.get_type_hints(cls).values():
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                walk(tp)
    walk(cfg_cls)
    section_of = {}  # id(instance) -> dotted prefix, learnt as sections are read from their parent
    saved = {c: c.__getattribute__ for c in classes}

    def getattribute(self, name):
        value = object.__getattribute__(self, name)
        fields = object.__getattribute__(self, "__dataclass_fields__")
        if name in fields:
            prefix = section_of.get(id(self), "")
            if dataclasses.is_dataclass(value):
                section_of[id(value)] = prefix + name + "."
            else:
                caller = sys._getframe(1)
                if caller.f_code.co_name not in NOT_READS:
                    reads.add(prefix + name)
        return value

    for c in classes:
        c.__getattribute__ = getattribute
    try:
        yield reads
    finally:
        for c, original in saved.items():
            c.__getattribute__ = original


def run(name, tmp_path, *overrides):
    mod = load_recipe(name)
    argv = ["--config", str(ROOT / "recipes" / "configs" / f"{name}_debug.yaml"), "device=cpu",
            "train.progress=false", "train.max_steps=2", f"out_dir={tmp_path}", *overrides]
    if "eval" in {k.split(".")[0] for k in schema(mod.Config)}:
        argv.append("eval.classifier=none")
    with record_reads(mod.Config) as reads:
        try:
            run_recipe_in_process(mod.task, mod.task.script, argv)
        except SystemExit:
            pass  # a data error (mnist files absent) still shows which keys were read on the way
    return set(reads), set(schema(mod.Config))


@pytest.mark.parametrize("name", RECIPES)
def test_every_key_of_every_recipe_is_read(name, tmp_path):
    reads, keys = run(name, tmp_path / "a")
    unread = keys - reads - set(CONDITIONAL)
    assert not unread, f"{name} accepts keys that nothing reads: {sorted(unread)}"


def test_conditional_keys_are_read_under_their_setting(tmp_path):
    """The shared optimizer, engine and data-source code reads each conditional key once its
    setting is on (one run per setting, on the first of these recipes that has the keys; DeepSpeed
    keeps its process group for the life of the process, so it is initialised once here)."""
    rng = np.random.default_rng(0)
    tree = image_tree(tmp_path / "tree", {"train": 16, "val": 16},
                      lambda split, i: rng.integers(0, 255, (28, 28, 3), dtype=np.uint8))
    by_override = {}
    for key, override in CONDITIONAL.items():
        by_override.setdefault(override, []).append(key)
    for i, (override, wanted) in enumerate(sorted(by_override.items())):
        if "mlflow" in override and importlib.util.find_spec("mlflow") is None:
            continue  # an optional package (requirements-trackers.txt), which CI installs
        name = next(n for n in ("mnist_mlp", "gan_mnist", "imagenet") if set(wanted) <= set(schema(load_recipe(n).Config)))
        reads, _ = run(name, tmp_path / str(i), *override.format(tree=tree).split())
        assert set(wanted) <= reads, f"{name} with {override}: {sorted(set(wanted) - reads)} still unread"
