"""value ranges declared next to their fields, and numbers in common notation."""
import pytest

from common.cli import help_text, parse_cli
from common.config import BaseConfig, ConfigError, apply, best_metric
from support.runs import load_recipe


def _error(cfg, key, value, source="the command line") -> str:
    with pytest.raises(ConfigError) as e:
        apply(cfg, {key: value}, source)
    return str(e.value)


@pytest.mark.parametrize("key,value,allowed,default", [
    ("optim.lr", -0.1, "in (0, 3.77789e+22]", "0.1"),
    ("optim.lr", "nan", "in (0, 3.77789e+22] and finite", "0.1"),
    ("train.ema_decay", 1.0, "in [0, 1)", "0.0"),
    ("train.ema_decay", 1.5, "in [0, 1)", "0.0"),
    ("train.ckpt_every_steps", -1, ">= 0", "0"),
    ("train.eval_every_steps", -3, ">= 0", "0"),
    ("train.log_every_steps", 0, ">= 1", "50"),
    ("train.max_steps", -5, ">= 0", "0"),
    ("optim.warmup_steps", -10, ">= 0", "0"),
    ("data.synthetic_train", 0, ">= 1", "4096"),
    ("dist_timeout_s", 0, ">= 1", "600"),
    ("train.batch_size", 0, ">= 1", "128"),
    ("optim.momentum", 1.0, "in [0, 1)", "0.9"),
    ("optim.min_lr_ratio", 2, "in [0, 1]", "0.0"),
    ("ckpt.keep_last", 0, ">= 1", "3"),
])
def test_out_of_range_value_names_key_value_range_and_fix(key, value, allowed, default):
    msg = _error(BaseConfig(), key, value)
    assert msg.startswith(f"config key '{key}' (from the command line) must be {allowed}")
    assert f"got {float(value) if isinstance(value, str) else value!r}" in msg
    assert f"e.g. {key}={default} (the default)" in msg


def test_list_length_and_items_are_checked():
    msg = _error(BaseConfig(), "optim.betas", [0.9])
    assert "config key 'optim.betas' (from the command line) must hold exactly 2 items, got 1: [0.9]" in msg
    assert "e.g. optim.betas=[0.9, 0.999] (the default)" in msg
    msg = _error(BaseConfig(), "optim.betas", [0.9, 1.5])
    assert "config key 'optim.betas[1]' (from the command line) must be in [0, 1) and finite, got 1.5" in msg
    assert "must hold exactly 3 items" in _error(BaseConfig(), "data.synthetic_shape", [28, 28])


@pytest.mark.parametrize("recipe,key,value,allowed", [
    ("mnist_mlp", "model.dropout", 1.2, "in [0, 1)"),
    ("mnist_cnn", "model.dropout", -0.1, "in [0, 1)"),
    ("pix2pix", "model.dropout", 1.0, "in [0, 1)"),
    ("gan_mnist", "model.d_input_dropout", 2, "in [0, 1)"),
    ("gan_mnist", "model.d_dropout", 1.0, "in [0, 1)"),
    ("cgan_mnist", "model.g_dropout", 1.0, "in [0, 1)"),
    ("cgan_mnist", "model.d_dropout", -1, "in [0, 1)"),
])
def test_recipe_model_configs_declare_their_ranges(recipe, key, value, allowed):
    msg = _error(load_recipe(recipe).Config(), key, value)
    assert msg.startswith(f"config key '{key}' (from the command line) must be {allowed}")
    assert f"got {float(value)!r}" in msg


def test_recipe_list_lengths():
    assert "'model.channels' (from the command line) must hold exactly 2 items, got 3" in \
        _error(load_recipe("mnist_cnn").Config(), "model.channels", [8, 16, 32])
    assert "'model.channels' (from the command line) must hold exactly 2 items, got 1" in \
        _error(load_recipe("lenet_cifar").Config(), "model.channels", [6])


def test_scientific_notation_is_a_float_on_the_command_line_and_in_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 3e-4\n  betas: [0.5, 9.99e-1]\n  weight_decay: 5E-4\ntrain:\n  max_steps: 1e3\n")
    cli = parse_cli(BaseConfig, str(tmp_path / "x.py"), ["--config", str(f)])
    assert cli.cfg.optim.lr == 3e-4 and cli.cfg.optim.weight_decay == 5e-4 and cli.cfg.optim.betas == [0.5, 0.999]
    assert cli.cfg.train.max_steps == 1000 and isinstance(cli.cfg.train.max_steps, int)
    cli = parse_cli(BaseConfig, str(tmp_path / "x.py"), ["optim.lr=1e-3", "train.clip_grad_norm=1E0"])
    assert cli.cfg.optim.lr == 1e-3 and isinstance(cli.cfg.optim.lr, float) and cli.cfg.train.clip_grad_norm == 1.0
    assert "expects int" in _error(BaseConfig(), "train.max_steps", "1.5e0")
    assert "expects float" in _error(BaseConfig(), "optim.lr", "1e-3x")


def test_out_of_range_in_yaml_names_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: -1e-3\n")
    with pytest.raises(ConfigError, match=r"'optim\.lr' \(from --config .*c\.yaml\) must be in \(0, 3\.77789e\+22\] and finite, got -0\.001"):
        parse_cli(BaseConfig, str(tmp_path / "x.py"), ["--config", str(f)])


@pytest.mark.parametrize("arg", ["ckpt.best_metric=", "ckpt.best_metric=none", "ckpt.best_metric=None"])
def test_empty_or_none_best_metric_means_no_best_checkpoint(tmp_path, arg):
    cli = parse_cli(BaseConfig, str(tmp_path / "x.py"), [arg])
    assert best_metric(cli.cfg) is None
    assert best_metric(parse_cli(BaseConfig, str(tmp_path / "x.py"), []).cfg) == ("val", "acc1")


def test_help_shows_the_ranges():
    text = help_text(BaseConfig, "x.py", None)
    assert "[float, in (0, 3.77789e+22]]" in text.split("optim.lr ")[1].splitlines()[0]
    assert "[list[float], 2 items, each in [0, 1)]" in text.split("optim.betas ")[1].splitlines()[0]
