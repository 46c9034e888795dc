"""DDP with N processes of batch b ends with the weights of 1 process of batch N*b."""
import pytest
import torch

from support.inprocess import run_inprocess
from support.runs import run_recipe
from support.outputs import final_weights, metrics

# Gloo sums gradients in a different order than one process computes a batch mean:
# equal up to float32 rounding, so compare with a tolerance a few ulps wide after 8 steps.
RTOL, ATOL = 1e-4, 1e-6


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL, msg=lambda m: f"{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), k


CASES = {
    # dropout off: per-rank dropout masks cannot match a single process's mask.
    "mnist_cnn": ["model.dropout=0", "train.max_steps=8"],
    "mnist_mlp": ["model.dropout=0", "train.max_steps=8", "train.grad_accum=2"],
}
# ResNet is absent on purpose: BatchNorm normalizes each rank's batch, so DDP is a different
# computation than one big batch (see the control below); SyncBatchNorm fixes that on GPUs only.


@pytest.mark.parametrize("recipe", list(CASES))
def test_two_ranks_match_one_process_with_the_same_global_batch(recipe, tmp_path):
    common = [*CASES[recipe], "data.synthetic_test=255", "train.eval_every_steps=0"]
    run_inprocess(recipe, f"out_dir={tmp_path / 'one'}", *common)
    run_recipe(recipe, f"out_dir={tmp_path / 'two'}", *common, nproc=2)
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"))
    # Eval over 255 samples on 2 ranks (128 + 127): same loss as one process (the recipe also
    # checks that the reduced count equals the split size).
    v1 = [m for m in metrics(tmp_path / "one") if m["split"] == "val"][-1]
    v2 = [m for m in metrics(tmp_path / "two") if m["split"] == "val"][-1]
    assert v1["loss"] == pytest.approx(v2["loss"], rel=1e-4)
    t1 = [m["loss"] for m in metrics(tmp_path / "one") if m["split"] == "train"]
    t2 = [m["loss"] for m in metrics(tmp_path / "two") if m["split"] == "train"]
    assert t1 == pytest.approx(t2, rel=1e-4)


def test_plain_ddp_batchnorm_differs_without_sync_bn(tmp_path):
    """The control: per-rank BatchNorm statistics make the weights differ, so the check can fail."""
    common = ["train.max_steps=6"]
    run_inprocess("resnet_cifar", f"out_dir={tmp_path / 'one'}", *common)
    run_recipe("resnet_cifar", f"out_dir={tmp_path / 'two'}", *common, nproc=2)
    with pytest.raises(AssertionError):
        assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"))
