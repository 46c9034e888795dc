"""Each key's roles and help are declared on its field (common/fields.py): a section's roles reach its
keys, a field redeclared in a subclass keeps its base's, --help shows them, and every help fits a line."""
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from common.cli import help_text
from common.config import BaseConfig
from common.engines.base import Engine
from common.engines.deepspeed import DeepSpeedEngine
from common.fields import APPLIED, IGNORED, NOT_COMPARED, Fixed, Role, ranges, roles, schema, setting
from common.train.resume import changes, conflicts
from support.runs import ROOT, load_recipe

RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py"))


@dataclass
class Inner:
    a: int = 0  # no role of its own
    b: int = setting(1, ge=0, evaluate=APPLIED)  # its own role over its section's


@dataclass
class Outer:
    inner: Inner = setting(factory=Inner, resume=Fixed("the inner part"), evaluate=IGNORED)
    c: str = setting("x", resume=NOT_COMPARED)  # a top-level key


@dataclass
class Derived(Outer):
    inner: Inner = field(default_factory=lambda: Inner(a=5))  # another default, the same roles
    c: str = setting("y", evaluate=APPLIED)  # a role of another kind: the base's resume role stays


def test_a_sections_roles_reach_its_keys_and_a_redeclared_field_keeps_its_bases():
    assert roles(Outer) == {"inner.a": Role(resume=Fixed("the inner part"), evaluate=IGNORED),
                            "inner.b": Role(resume=Fixed("the inner part"), evaluate=APPLIED),
                            "c": Role(resume=NOT_COMPARED)}
    assert roles(Derived) == {**roles(Outer), "c": Role(resume=NOT_COMPARED, evaluate=APPLIED)}
    assert ranges(Derived)["inner.b"].ge == 0 and (Derived().inner.a, Derived().c) == (5, "y")


def test_the_recipes_keep_the_roles_of_what_they_redeclare():
    gan, classifier, imagenet = (roles(load_recipe(n).Config) for n in ("pix2pix", "mnist_mlp", "imagenet"))
    assert gan["optim.lr"].evaluate == IGNORED  # GanConfig redeclares optim with the GAN defaults
    assert gan["eval.grid"].evaluate == APPLIED  # pix2pix redeclares eval with its grid size
    assert gan["model.l1_weight"].resume == classifier["model.hidden"].resume == Fixed(
        "the model (the checkpoint's weights have its shape)")  # each recipe's own model section
    assert classifier["data.name"].resume == imagenet["data.name"].resume == Fixed("the dataset")
    assert imagenet["model.pretrained"].resume == NOT_COMPARED  # a field's own role over its section's
    assert classifier["train.tta_flip"].evaluate == APPLIED and classifier["train.sync_bn"].evaluate == IGNORED


@pytest.mark.parametrize("name", RECIPES)
def test_every_key_has_a_help_line_of_at_most_100_characters(name, monkeypatch):
    mod = load_recipe(name)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)  # help is read from the source, found through the module
    helps = {key: text for key, (_, _, text) in schema(mod.Config).items()}
    assert not [k for k, text in helps.items() if not text], "keys without a trailing # comment"
    long = {k: len(text) for k, text in helps.items() if len(text) > 100}
    assert not long, f"help longer than 100 characters (move the detail to docs/usage.md): {long}"


def test_help_shows_each_keys_declared_roles():
    text = help_text(BaseConfig, "x.py", None)
    for key, role in roles(BaseConfig).items():
        line = text.split(f"\n  {key} ")[1].splitlines()[0]
        assert line.endswith(f"] {{{role.describe()}}}" if role.describe() else "]"), (key, line)
    described = {key: role.describe() for key, role in roles(BaseConfig).items()}
    assert described["seed"] == "fixed on resume" and described["optim.lr"] == "training-only"
    assert described["precision"] == "fixed on resume under engine=deepspeed; --evaluate may set it"
    assert described["out_dir"] == "not compared on resume; training-only" and described["log.project"] == ""


def test_a_resume_refuses_what_the_declarations_fix_under_this_runs_engine():
    keys = roles(load_recipe("mnist_mlp").Config)
    saved = {"seed": 0, "precision": "fp32", "engine": "ddp", "out_dir": "a", "optim": {"lr": 0.1},
             "deepspeed_config:zero_optimization.stage": 2, "deepspeed_config:reduce_bucket_size": 5}
    now = {"seed": 1, "precision": "bf16", "engine": "deepspeed", "out_dir": "b", "optim": {"lr": 0.2},
           "deepspeed_config:zero_optimization.stage": 3, "deepspeed_config:reduce_bucket_size": 6}
    changed = changes(saved, now, keys)
    assert [k for k, _, _ in changed] == ["seed", "precision", "engine", "optim.lr",
                                          "deepspeed_config:zero_optimization.stage",
                                          "deepspeed_config:reduce_bucket_size"]  # out_dir: not compared
    refused = lambda rt, sd: [line.split(": ")[0].strip() for line in conflicts(changed, sd, rt, keys)]  # noqa: E731
    ddp = SimpleNamespace(name="ddp", owned=set(), fixed_settings=Engine.fixed_settings)
    deepspeed = SimpleNamespace(name=DeepSpeedEngine.name, owned={"net"}, fixed_settings=DeepSpeedEngine.fixed_settings)
    assert refused(ddp, {}) == ["seed"]
    assert refused(ddp, {"engine_owned": ["net"]}) == ["seed", "engine"]  # from a format of its own
    assert refused(deepspeed, {}) == ["seed", "precision", "engine", "deepspeed_config:zero_optimization.stage"]


@pytest.mark.parametrize("name", RECIPES)
def test_keys_that_are_not_settings_of_the_trained_run_never_refuse_an_after_training_command(name):
    # out_dir, resume, overwrite, init_from, pretrained weights: where a run lives or what it starts from,
    # so --evaluate/--export can never conflict with the checkpoint on them
    keys = roles(load_recipe(name).Config)
    assert not [k for k, role in keys.items() if role.resume == NOT_COMPARED and role.evaluate not in (APPLIED, IGNORED)]
