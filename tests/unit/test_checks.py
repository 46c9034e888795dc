"""Start-of-run warnings (common/train/checks.py): each fires for its case, and none for a normal run."""
import pytest

from common.config import BaseConfig, ConfigError, apply
from common.train.checks import warnings
from support.inprocess import run_inprocess


def cfg(**flat):
    return apply(BaseConfig(), flat, "test")


def test_a_normal_run_has_no_warnings():
    assert warnings(cfg(**{"optim.warmup_steps": 10, "train.eval_every_steps": 50, "train.ckpt_every_steps": 100}),
                    total=100, n_train=4096) == []


def test_warmup_longer_than_the_run():
    (w,) = warnings(cfg(**{"optim.warmup_steps": 390, "optim.lr": 0.1}), total=12)
    assert "optim.warmup_steps=390 >= the run's 12 steps" in w and "never reaches optim.lr=0.1" in w
    assert "set optim.warmup_steps below 12" in w


def test_onecycle_warmup_past_the_end_is_an_error_naming_the_fix():
    with pytest.raises(ConfigError, match=r"optim.warmup_steps=20 is longer than the run \(12 steps\).*"
                                          r"set optim.warmup_steps below 12"):
        warnings(cfg(**{"optim.warmup_steps": 20, "optim.schedule": "onecycle"}), total=12)


@pytest.mark.parametrize("key,what", [("eval_every_steps", "evaluation"), ("ckpt_every_steps", "checkpoint")])
def test_cadence_that_never_fires(key, what):
    (w,) = warnings(cfg(**{f"train.{key}": 500}), total=100)
    assert f"train.{key}=500 is more than the run's 100 steps: it never fires, only the final {what} at step 100" in w
    assert f"set train.{key} <= 100" in w
    assert warnings(cfg(**{f"train.{key}": 100}), total=100) == []  # fires once, at the end, as asked


def test_global_batch_larger_than_the_dataset_without_drop_last():
    (w,) = warnings(cfg(**{"train.batch_size": 512, "data.drop_last": False}), total=10, n_train=300)
    assert "train.batch_size=512 is larger than the training set (300 samples)" in w
    assert "set train.batch_size <= 300" in w


def test_unknown_length_skips_what_needs_it():
    assert warnings(cfg(**{"optim.warmup_steps": 10 ** 9, "train.eval_every_steps": 10 ** 9}), total=None) == []


def test_dry_run_prints_the_warnings_it_can_compute():
    out = run_inprocess("mnist_cnn", "--dry-run", "train.max_steps=100", "train.ckpt_every_steps=1000", config=None).stdout
    assert "warning: optim.warmup_steps=200 >= the run's 100 steps" in out  # 200 from mnist_cnn.yaml
    assert "warning: train.ckpt_every_steps=1000 is more than the run's 100 steps" in out
