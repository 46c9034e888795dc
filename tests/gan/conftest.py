"""Shared fixtures for the GAN tests: a tiny judge classifier, trained by our own mnist_cnn recipe."""
import pytest

from support.inprocess import run_inprocess


@pytest.fixture(scope="session")
def judge_dir(tmp_path_factory):
    """mnist_cnn's debug config (synthetic 1x28x28, 16 steps): the classifier behind val/fd in these tests."""
    out = tmp_path_factory.mktemp("judge") / "run"
    run_inprocess("mnist_cnn", f"out_dir={out}")
    return out
