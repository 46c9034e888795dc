import subprocess
import sys

import pytest
import yaml

from common.config import BaseConfig, ConfigError, apply, parse_cli, schema
from helpers import ROOT, load_recipe


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


def test_cli_error_exits_2_with_one_line():
    p = subprocess.run([sys.executable, str(ROOT / "recipes" / "mnist_mlp.py"), "train.batchsize=64"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "config error: unknown config key 'train.batchsize' (from the command line); did you mean 'train.batch_size'?"]


def test_help_lists_every_key_with_default_and_meaning():
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "resnet_cifar.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    for key in schema(load_recipe("resnet_cifar").Config):
        assert f"  {key} " in out, key
    assert "optim.lr" in out and "peak learning rate" in out and "(0.1)" in out
    assert "model.arch" in out and "'resnet20' | 'resnet32'" in out


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
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "mnist_cnn.py"), "--dry-run",
                          "device=cpu", f"out_dir={tmp_path / 'r'}"], capture_output=True, text=True, check=True).stdout
    assert "rank 0/1 local_rank 0/1" in out and "device cpu" in out
    assert "batch_size: 128" in out
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


def test_batch_not_divisible_is_a_clear_error(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "recipes" / "mnist_cnn.py"), "--dry-run", "device=cpu",
                        "train.batch_size=100", "train.grad_accum=3"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "must be divisible by world_size x train.grad_accum = 1 x 3 = 3" in p.stderr
    assert "train.batch_size=99 or 102" in p.stderr
