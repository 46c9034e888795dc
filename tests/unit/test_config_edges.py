"""Settings that used to slip through the config checks: duplicate YAML keys, a directory given as
--config, numbers past what they are stored in (a 64-bit seed, a float32 hyperparameter)."""
from __future__ import annotations

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
