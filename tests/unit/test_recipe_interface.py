"""Every recipe's `task` is the one declared contract, common.entry.Task; a task that does not fit it is
refused when it is built; and no recipe holds the plumbing common/ owns."""
import dataclasses
import inspect
import re

import pytest

from common.cli import parse_cli
from common.entry import CALLS, Task
from common.train.runtime import runtime
from support.runs import ROOT, load_recipe

RECIPES = sorted(p for p in (ROOT / "recipes").glob("*.py"))
MEMBERS = [f.name for f in dataclasses.fields(Task)]
REQUIRED = [f.name for f in dataclasses.fields(Task)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
# What the design keeps out of recipes: process groups, engine wrappers, loss scaling, rank
# branches, argument parsing, the environment, engine switches.
PLUMBING = r"init_process_group|DistributedDataParallel|DDP\(|GradScaler|rank\s*==\s*0|argparse|os\.environ|engine\s*==|cfg\.engine"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_task_is_the_contract(path):
    mod = load_recipe(path.stem)
    assert type(mod.task) is Task, f"{path.name}: task is a {type(mod.task).__name__}, not common.entry.Task"
    assert mod.task.Config is mod.Config
    assert mod.task.script == str(path), "the task names its own script: configs/<name>.yaml is its base"
    found = re.findall(PLUMBING, path.read_text())
    assert not found, f"{path.name} contains {found}: that belongs in common/"


def members(task) -> dict:
    return {name: getattr(task, name) for name in MEMBERS}


def test_every_member_is_required():
    good = members(load_recipe("mnist_mlp").task)
    Task(**good)  # the control: all of them fit
    assert set(MEMBERS) - set(REQUIRED) == {"metrics", "inputs"}  # optional: {} declares no metrics; None: the images
    for name in REQUIRED:
        with pytest.raises(TypeError, match=name):
            Task(**{k: v for k, v in good.items() if k != name})


@pytest.mark.parametrize("name", MEMBERS)
def test_a_member_of_the_wrong_kind_is_refused(name):
    task = load_recipe("gan_mnist").task
    with pytest.raises(TypeError, match=f"Task.{name} "):
        dataclasses.replace(task, **{name: object()})


def takes(n: int):
    """A function that must be called with exactly n positional arguments."""
    def fn(*args):
        return None
    fn.__signature__ = inspect.Signature([inspect.Parameter(f"a{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(n)])
    return fn


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_callable_member_is_called_with_the_contract_arguments(name):
    task, args = load_recipe("mnist_cnn").task, CALLS[name]
    dataclasses.replace(task, **{name: takes(len(args))})  # the control: the contract's count fits
    for n in (len(args) - 1, len(args) + 1):  # one argument missing, one too many
        with pytest.raises(TypeError, match=rf"Task.{name} must be called as {name}\({', '.join(args)}\)"):
            dataclasses.replace(task, **{name: takes(n)})


def test_a_step_without_its_config_and_an_evaluate_that_wants_a_judge_are_refused():
    """The contract's calls pass cfg first and no judge: a member of another shape is a TypeError."""
    task = load_recipe("dcgan").task
    with pytest.raises(TypeError, match="Task.train_step"):
        dataclasses.replace(task, train_step=lambda batch, state, rt: {})
    with pytest.raises(TypeError, match="Task.evaluate"):
        dataclasses.replace(task, evaluate=lambda cfg, state, rt, loader, judge: {})


def test_inputs_for_export_are_made_from_cfg_and_a_batch():
    task = load_recipe("cgan_mnist").task
    dataclasses.replace(task, inputs=takes(2))  # the control
    with pytest.raises(TypeError, match=r"Task.inputs must be called as inputs\(cfg, batch\)"):
        dataclasses.replace(task, inputs=lambda batch: {})


def test_a_config_that_is_not_a_recipe_schema_is_refused():
    task = load_recipe("mnist_mlp").task
    with pytest.raises(TypeError, match="Task.Config"):
        dataclasses.replace(task, Config=dict)
    with pytest.raises(TypeError, match="Task.ema"):
        dataclasses.replace(task, ema=["net"])


def test_the_task_cannot_be_changed_after_it_is_built():
    task = load_recipe("mnist_mlp").task
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.train_step = lambda cfg, batch, state, rt: {}


@pytest.mark.parametrize("member, value", [("exported", "G"), ("ema", ("net", "G"))])
def test_exported_and_ema_must_name_built_models(member, value):
    mod = load_recipe("mnist_mlp")
    cfg = parse_cli(mod.Config, mod.task.script, ["--config", str(ROOT / "recipes/configs/mnist_mlp_debug.yaml"),
                                                  "device=cpu"]).cfg
    task = dataclasses.replace(mod.task, **{member: value})
    with runtime(cfg) as rt:
        loaders = task.build_data(cfg, rt)
        with pytest.raises(TypeError, match=r"must name models build_models returns: \['net'\]"):
            task.build_state(cfg, rt, loaders)
        mod.task.build_state(cfg, rt, loaders)  # the control: the recipe's own names fit


def test_the_docs_show_every_member_with_its_arguments():
    text = (ROOT / "docs" / "usage.md").read_text()
    table = text[text.index("**The task contract.**"):text.index("`saved` is what a checkpoint records")]
    for name in [*MEMBERS, "main"]:
        shown = f"{name}({', '.join(CALLS[name])}" if name in CALLS else name
        assert f"| `{shown}" in table, f"docs/usage.md's task contract lacks {shown}"
