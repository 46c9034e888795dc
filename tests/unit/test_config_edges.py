"""Settings the config checks must catch: duplicate YAML keys, a directory given as
--config, numbers past what they are stored in (a 64-bit seed, a float32 hyperparameter)."""
from __future__ import annotations

import re

import pytest
import torch

from common.cli import parse_cli
from common.config import BaseConfig, ConfigError


def test_a_key_given_twice_in_a_yaml_names_the_key_the_file_and_both_lines(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("train:\n  batch_size: 64\nseed: 3\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=rf"config file {f} gives key 'train' twice \(lines 1 and 4\)"):
        parse_cli(BaseConfig, str(tmp_path / "x.py"), ["--config", str(f)])
    f.write_text("train:\n  batch_size: 64\n  epochs: 2\n  batch_size: 32\n")  # inside a block too
    with pytest.raises(ConfigError, match=r"gives key 'batch_size' twice \(lines 2 and 4\)"):
        parse_cli(BaseConfig, str(tmp_path / "x.py"), ["--config", str(f)])
    f.write_text("train:\n  batch_size: 64\n  epochs: 2\nseed: 3\n")  # merged: both kept
    c = parse_cli(BaseConfig, str(tmp_path / "x.py"), ["--config", str(f)]).cfg
    assert (c.train.batch_size, c.train.epochs, c.seed) == (64, 2, 3)


def test_a_directory_as_config_file_says_it_is_a_directory(tmp_path):
    (tmp_path / "debug.yaml").write_text("seed: 1\n")
    with pytest.raises(ConfigError, match=rf"config file {tmp_path} is a directory: name a YAML file in it, "
                                          rf"e\.g\. {tmp_path / 'debug.yaml'}") as e:
        parse_cli(BaseConfig, str(tmp_path / "x.py"), ["--config", str(tmp_path)])
    assert "not found" not in str(e.value)
    parse_cli(BaseConfig, str(tmp_path / "x.py"), ["--config", str(tmp_path / "debug.yaml")])  # the advice works


def test_seed_range_is_what_torch_seeds_hold():
    top = 2**64 - 1
    assert parse_cli(BaseConfig, "x.py", [f"seed={top}"]).cfg.seed == top
    torch.manual_seed(top)  # the edge itself is a seed torch takes
    with pytest.raises(ConfigError, match=rf"'seed' .* must be in \[0, {top}\], got {top + 1}"):
        parse_cli(BaseConfig, "x.py", [f"seed={top + 1}"])


@pytest.mark.parametrize("key", ["optim.weight_decay", "optim.step_gamma", "train.clip_grad_norm"])
def test_a_float_setting_must_fit_float32(key):
    top = float(torch.finfo(torch.float32).max)
    assert parse_cli(BaseConfig, "x.py", [f"{key}={top!r}"]).cfg is not None
    for beyond in ("3.5e38", "1e308"):
        with pytest.raises(ConfigError, match=rf"'{key}' .*at most 3\.402823e\+38 in size \(torch computes it in "
                                              rf"float32\), got {re.escape(repr(float(beyond)))}"):
            parse_cli(BaseConfig, "x.py", [f"{key}={beyond}"])


def test_the_largest_accepted_lr_steps_without_overflow():
    """optim.lr at its edge is a learning rate torch's optimizers take, Adam with the largest beta1 too
    (1e308 raised at the first step)."""
    top = parse_cli(BaseConfig, "x.py", ["optim.lr=3.77789e22"]).cfg.optim.lr
    with pytest.raises(ConfigError, match=r"'optim\.lr' .* must be in \(0, 3\.77789e\+22\] and finite, got 3\.8e\+22"):
        parse_cli(BaseConfig, "x.py", ["optim.lr=3.8e22"])
    beta1 = 1 - 2**-53
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), 1e-30)
    for opt in (torch.optim.SGD([p], lr=top, momentum=0.9), torch.optim.AdamW([p], lr=top, betas=(beta1, 0.999))):
        opt.step()
    with pytest.raises(RuntimeError, match="overflow"):
        torch.optim.SGD([p], lr=1e308, momentum=0.9).step()
