"""Engines on a CUDA GPU: mixed precision paths the CPU tests cannot reach (skipped without a GPU).

One GPU is enough for what differs from the CPU runs: Accelerate's bf16/fp16 (its GradScaler),
DeepSpeed's bf16/fp16 optimizers and ZeRO-3 over NCCL, and resuming those from checkpoints.
Several GPUs and several nodes add only more ranks to the same code paths.
"""
import math
import shutil

import pytest
import torch

from support.outputs import metrics
from support.launchutil import launch, state, train_losses

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def run_gpu(launcher, recipe, out, *overrides):
    return launch(launcher, recipe, out, *overrides, nproc=1, device="cuda", accelerate_config="single_gpu.yaml")


def _learns(out, key="loss"):
    losses = train_losses(out, key)
    assert all(math.isfinite(v) for v in losses.values()), losses
    return losses


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_accelerate_mixed_precision(precision, tmp_path):
    out = tmp_path / "run"
    proc = run_gpu("accelerate", "mnist_cnn", out, f"precision={precision}")
    losses = _learns(out)
    assert losses[16] < losses[4], losses
    sd = state(out, 16)
    assert sd["config"]["engine"] == "accelerate" and sd["config"]["precision"] == precision
    assert bool(sd["engine"]["scaler"]) == (precision == "fp16"), sd["engine"]["scaler"]  # Accelerate's GradScaler, checkpointed
    assert proc.returncode == 0


@pytest.mark.parametrize("config,precision", [("zero1", "fp32"), ("zero2_bf16", "bf16"), ("zero2_fp16", "fp16"),
                                              ("zero3", "fp32")])
def test_deepspeed_precision_and_stages_resume(config, precision, tmp_path):
    out = tmp_path / "run"
    args = (f"deepspeed_config=launch/deepspeed/{config}.json", f"precision={precision}", "train.log_every_steps=1")
    run_gpu("deepspeed", "mnist_mlp", out, *args)
    losses = _learns(out)
    assert losses[16] < losses[1], losses
    assert state(out, 16)["engine_owned"] == ["net"]
    again = tmp_path / "resumed"
    shutil.copytree(out, again)
    shutil.rmtree(again / "checkpoints" / "step_00000016")
    proc = run_gpu("deepspeed", "mnist_mlp", again, *args)
    assert "resumed from" in proc.stdout and "step 8" in proc.stdout
    resumed = train_losses(again)
    for step in range(9, 17):  # same GPU, same kernels: the resumed half retraces the first run
        assert math.isclose(resumed[step], losses[step], rel_tol=1e-3), (step, resumed[step], losses[step])


def test_gan_two_engines_fp16_deepspeed(tmp_path):
    out = tmp_path / "gan"
    run_gpu("deepspeed", "gan_mnist", out, "deepspeed_config=launch/deepspeed/zero2_fp16.json", "precision=fp16")
    _learns(out, "loss_g")
    assert state(out, 16)["engine_owned"] == ["D", "G"]
    assert [m["step"] for m in metrics(out) if m["split"] == "val"] == [8, 16]
