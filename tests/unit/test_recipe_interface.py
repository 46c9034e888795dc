"""Every recipe exposes one task with the shared interface, and none of the plumbing common/ owns."""
import re

import pytest

from support.runs import ROOT, load_recipe

RECIPES = sorted(p for p in (ROOT / "recipes").glob("*.py"))
INTERFACE = ("Config", "build_data", "build_state", "train_step", "evaluate", "main")
# What the design keeps out of recipes: process groups, engine wrappers, loss scaling, rank
# branches, argument parsing, the environment, engine switches.
PLUMBING = r"init_process_group|DistributedDataParallel|DDP\(|GradScaler|rank\s*==\s*0|argparse|os\.environ|engine\s*==|cfg\.engine"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_is_a_task_with_the_shared_interface(path):
    mod = load_recipe(path.stem)
    for name in INTERFACE:
        assert callable(getattr(mod.task, name, None)), f"{path.name}: task.{name} missing"
    assert mod.task.Config is mod.Config
    assert mod.task.script == str(path), "the task names its own script: configs/<name>.yaml is its base"
    found = re.findall(PLUMBING, path.read_text())
    assert not found, f"{path.name} contains {found}: that belongs in common/"
