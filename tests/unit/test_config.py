import pytest
import yaml

from common.config import BaseConfig, ConfigError, apply
from common.cli import parse_cli
from support.inprocess import run_inprocess
from support.runs import ROOT, load_recipe


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'.*did you mean 'optim\.lr'"):
        apply(BaseConfig(), {"optim.lrr": 0.1}, "test")


@pytest.mark.parametrize("key,value,expected", [
    ("optim.lr", "fast", "float"), ("train.batch_size", 1.5, "int"), ("train.batch_size", True, "int"),
    ("data.download", "yes", "bool"), ("precision", "fp8", "'fp32' | 'bf16' | 'fp16'"),
    ("data.synthetic_shape", 3, "list[int]"),
])
def test_wrong_type_names_key_and_expected_type(key, value, expected):
    with pytest.raises(ConfigError) as e:
        apply(BaseConfig(), {key: value}, "test")
    assert f"'{key}' expects {expected}" in str(e.value)


def test_cli_overrides_beat_yaml_and_parse_scalars(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\ntrain:\n  epochs: 3\n")
    cli = parse_cli(BaseConfig, str(tmp_path / "x.py"),
                    ["--config", str(f), "optim.lr=0.05", "data.download=true", "data.synthetic_shape=[3,8,8]"])
    assert cli.cfg.optim.lr == 0.05 and cli.cfg.train.epochs == 3
    assert cli.cfg.data.download is True and cli.cfg.data.synthetic_shape == [3, 8, 8]
    assert cli.recipe == "x" and not cli.dry_run


def test_int_accepted_for_float_key():
    cfg = apply(BaseConfig(), {"optim.lr": 1}, "t")
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


RECIPE_YAMLS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=lambda p: p.name)
def test_every_yaml_loads_into_its_recipe_schema(path):
    recipe = next(r for r in sorted((ROOT / "recipes").glob("*.py"), key=lambda r: -len(r.stem))
                  if path.stem == r.stem or path.stem.startswith(r.stem + "_"))
    mod = load_recipe(recipe.stem)
    cli = parse_cli(mod.Config, str(recipe), ["--config", str(path)])
    assert yaml.safe_load(path.read_text())  # not empty
    assert cli.cfg.out_dir.startswith("runs/")


def test_dry_run_prints_config_and_mapping(tmp_path):
    out = run_inprocess("mnist_cnn", "--dry-run", f"out_dir={tmp_path / 'r'}", config=None).stdout
    assert "rank 0/1 local_rank 0/1" in out and "device cpu" in out
    assert "batch_size: 128" in out
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


# ----------------------------------------------------------------------------- layers: recipe YAML < --config ... < key=value

def _recipe_dir(tmp_path, yaml_text: str):
    """A fake recipe script x.py with its own configs/x.yaml (scripts are only read for their path)."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.yaml").write_text(yaml_text)
    return str(tmp_path / "x.py")


def test_layers_in_order_recipe_yaml_then_each_config_then_cli(tmp_path):
    script = _recipe_dir(tmp_path, "seed: 1\ntrain:\n  epochs: 200\n  batch_size: 64\noptim:\n  lr: 0.5\n  momentum: 0.8\n")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("train:\n  batch_size: 32\noptim:\n  lr: 0.4\n  weight_decay: 0.1\n")
    b.write_text("optim:\n  lr: 0.3\n")
    cli = parse_cli(BaseConfig, script, ["--config", str(a), f"--config={b}", "optim.weight_decay=0.2"])
    c = cli.cfg
    assert c.seed == 1 and c.train.epochs == 200 and c.optim.momentum == 0.8  # recipe YAML kept under --config
    assert c.train.batch_size == 32  # A beats the recipe YAML
    assert c.optim.lr == 0.3  # B beats A
    assert c.optim.weight_decay == 0.2  # the command line beats A
    assert cli.sources["seed"].startswith("recipe YAML ") and cli.sources["seed"].endswith("x.yaml")
    assert cli.sources["train.batch_size"].endswith("a.yaml") and cli.sources["optim.lr"].endswith("b.yaml")
    assert cli.sources["optim.weight_decay"] == "the command line" and "train.grad_accum" not in cli.sources
    assert [p.name for p in cli.config_files] == ["x.yaml", "a.yaml", "b.yaml"]


def test_base_chain_is_resolved_relative_to_each_yaml(tmp_path):
    script = _recipe_dir(tmp_path, "train:\n  epochs: 200\n")
    (tmp_path / "clusters" / "shared").mkdir(parents=True)
    (tmp_path / "clusters" / "shared" / "common.yaml").write_text("seed: 7\noptim:\n  lr: 0.7\n")
    (tmp_path / "clusters" / "mid.yaml").write_text("base: shared/common.yaml\noptim:\n  lr: 0.6\n  momentum: 0.5\n")
    (tmp_path / "clusters" / "top.yaml").write_text("base: mid.yaml\ntrain:\n  batch_size: 512\n")
    cli = parse_cli(BaseConfig, script, ["--config", str(tmp_path / "clusters" / "top.yaml")])
    c = cli.cfg
    assert (c.seed, c.optim.lr, c.optim.momentum, c.train.batch_size, c.train.epochs) == (7, 0.6, 0.5, 512, 200)
    assert [p.name for p in cli.config_files] == ["x.yaml", "common.yaml", "mid.yaml", "top.yaml"]
    assert cli.sources["seed"].endswith("common.yaml (base of mid.yaml)")


def test_base_cycle_is_an_error_naming_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml; remove the 'base:' key"):
        parse_cli(BaseConfig, str(tmp_path / "x.py"), ["--config", str(tmp_path / "a.yaml")])


def test_missing_base_names_the_file_that_names_it(tmp_path):
    (tmp_path / "a.yaml").write_text("base: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml \(named by 'base:' in .*a\.yaml; "
                                          r"base paths are relative to that file's directory\)"):
        parse_cli(BaseConfig, str(tmp_path / "x.py"), ["--config", str(tmp_path / "a.yaml")])
    (tmp_path / "a.yaml").write_text("base: 3\n")
    with pytest.raises(ConfigError, match=r"'base' in .*a\.yaml must name a YAML file, got 3; write e\.g\. 'base: "):
        parse_cli(BaseConfig, str(tmp_path / "x.py"), ["--config", str(tmp_path / "a.yaml")])


def test_default_out_dir_names_the_recipe(tmp_path):
    """A user's YAML with only optim.lr must not send two recipes into one run directory."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("optim:\n  lr: 0.01\n")
    dirs = {}
    for name in ("a_recipe", "b_recipe"):
        (tmp_path / name).mkdir()
        dirs[name] = parse_cli(BaseConfig, str(tmp_path / name / f"{name}.py"), ["--config", str(mine)]).cfg.out_dir
    assert dirs == {"a_recipe": "runs/a_recipe", "b_recipe": "runs/b_recipe"}
    assert parse_cli(BaseConfig, str(tmp_path / "x.py"), ["out_dir=runs/{recipe}_lr01"]).cfg.out_dir == "runs/x_lr01"


def test_debug_config_layers_on_the_recipe_yaml():
    """--config layers on the recipe YAML, never replaces it (a replaced YAML would turn 200 CIFAR-10 epochs into 1 of Fashion-MNIST)."""
    mod = load_recipe("resnet_cifar")
    cli = parse_cli(mod.Config, str(ROOT / "recipes" / "resnet_cifar.py"),
                    ["--config", str(ROOT / "recipes" / "configs" / "resnet_cifar_debug.yaml")])
    assert cli.cfg.train.epochs == 200 and cli.cfg.optim.weight_decay == 0.0005  # from resnet_cifar.yaml
    assert cli.cfg.train.max_steps == 12 and cli.cfg.data.name == "synthetic"  # from the debug YAML


def test_dry_run_says_where_each_value_came_from(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  batch_size: 64\n")
    out = run_inprocess("mnist_cnn", "--dry-run", "--config", str(extra), "optim.lr=0.01", config=None).stdout
    assert "  lr: 0.01  # from the command line" in out
    assert f"  batch_size: 64  # from --config {extra}" in out
    assert "  epochs: 15  # from recipe YAML recipes/configs/mnist_cnn.yaml" in out
    assert "  grad_accum: 1\n" in out  # a schema default has no comment
    assert "a value without '# from' is the schema default" in out
    yaml.safe_load(out.split("\n\n")[0])  # still YAML


def test_config_without_a_path_says_how(tmp_path):
    with pytest.raises(ConfigError, match=r"^--config needs a file path: --config FILE$"):
        parse_cli(BaseConfig, str(tmp_path / "x.py"), ["--config"])
