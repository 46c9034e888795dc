"""Every recipe gets its runtime from common.engines.make_runtime, so engine= works for all of them."""
import re

import pytest

from helpers import ROOT

RECIPES = sorted(p for p in (ROOT / "recipes").glob("*.py"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_builds_its_runtime_with_make_runtime(path):
    src = path.read_text()
    assert "make_runtime(" in src, f"{path.name}: use `with make_runtime(cli.cfg, cli.recipe) as rt:` (common.engines)"
    assert not re.search(r"\bRuntime\(", src), f"{path.name} constructs Runtime directly: engine= would be ignored"
    assert "engine ==" not in src and "cfg.engine" not in src, f"{path.name} branches on the engine"
