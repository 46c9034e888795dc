"""A recipe process's command line: --help, and a bad key or batch arithmetic is exit 2 with one line on stderr."""
import subprocess
import sys

from common.config import schema
from support.runs import ROOT, load_recipe


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


def test_batch_not_divisible_is_a_clear_error(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "recipes" / "mnist_cnn.py"), "--dry-run", "device=cpu",
                        "train.batch_size=100", "train.grad_accum=3"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "must be divisible by world_size x train.grad_accum = 1 x 3 = 3" in p.stderr
    assert "train.batch_size=99 or 102" in p.stderr
