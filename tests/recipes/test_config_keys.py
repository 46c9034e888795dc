"""Every config key a recipe accepts has an effect: some code outside common/config.py reads it.

Each recipe runs its debug config for two steps in this process while every read of a config
field is recorded, except the reads that only copy the whole config (config.yaml, checkpoints,
TensorBoard hparams) or parse and validate it. A key that is in the schema but never read is a
key that can be set without any effect: the test names it. A few keys are read only under
another setting (a schedule, an optimizer, a launcher): their fields declare it (`read_when=`,
common/fields.py), and the test checks each such key is read once that setting is on.
"""
import dataclasses
import importlib.util
import sys
import typing
from contextlib import contextmanager

import numpy as np
import pytest

from common.config import schema
from common.data.pack import pack
from common.fields import roles
from common.entry import run as run_recipe_in_process
from support.images import image_tree
from support.runs import ROOT, load_recipe

RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py"))
NOT_READS = {"_asdict_inner", "asdict", "schema", "apply", "to_dict", "dump_yaml", "validate"}

# The recipes the conditional keys are checked on: the first of them that has a key declares its setting.
CONDITIONAL_ON = ("mnist_mlp", "gan_mnist", "imagenet")


def conditional(cfg_cls) -> dict[str, str]:
    """key -> the override under which it takes effect, as its field declares (read_when=)."""
    return {k: role.read_when for k, role in roles(cfg_cls).items() if role.read_when}


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
    unread = keys - reads - set(conditional(load_recipe(name).Config))
    assert not unread, f"{name} accepts keys that nothing reads: {sorted(unread)}"


def test_conditional_keys_are_read_under_their_setting(tmp_path):
    """The shared optimizer, engine and data-source code reads each conditional key once its
    setting is on (one run per recipe and setting, on the first of CONDITIONAL_ON that has the key;
    DeepSpeed keeps its process group for the life of the process, so it is initialised once here).
    data.name=folder runs on a small image tree, data.name=shards on its pack; the MLflow run needs no setup (W&B reads log.project too)."""
    rng = np.random.default_rng(0)
    tree = image_tree(tmp_path / "tree", {"train": 16, "val": 16},
                      lambda split, i: rng.integers(0, 255, (28, 28, 3), dtype=np.uint8))
    packed = tmp_path / "packed"
    pack(tree, packed, 10**6)
    by_run, seen = {}, set()
    for name in CONDITIONAL_ON:
        for key, override in conditional(load_recipe(name).Config).items():
            if key not in seen:
                seen.add(key)
                by_run.setdefault((name, override), []).append(key)
    assert {"optim.momentum", "data.folder_shape", "data.direction", "data.shard_cache", "model.pretrained_download"} <= seen
    for i, ((name, override), wanted) in enumerate(sorted(by_run.items())):
        if "mlflow" in override and importlib.util.find_spec("mlflow") is None:
            continue  # an optional package (requirements-trackers.txt), which CI installs
        folder = {"data.name=folder": [f"data.root={tree}"], "data.name=shards": [f"data.root={packed}"]}.get(override, [])
        reads, _ = run(name, tmp_path / str(i), override, *folder)
        assert set(wanted) <= reads, f"{name} with {override}: {sorted(set(wanted) - reads)} still unread"
