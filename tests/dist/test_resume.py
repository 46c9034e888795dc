"""N steps == N/2 steps + resume + N/2 steps, bitwise on CPU, including mid-epoch."""
import signal
import subprocess

import pytest
import torch

from common.formats.checkpoint import load_file
from support.inprocess import run_inprocess
from support.runs import ROOT, recipe_command, run_recipe
from support.outputs import final_weights, metrics, resume_dir_from


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# torchvision's per-sample policy and random erasing, and MixUp/CutMix on the batch, all on.
AUGMENTED = ("data.auto_augment=ta_wide", "data.random_erase=0.25", "data.mixup_alpha=0.2", "data.cutmix_alpha=1.0")


# 512 synthetic samples / batch 32 = 16 steps per epoch: step 6 is mid-epoch, step 20 is in epoch 2.
@pytest.mark.parametrize("recipe,nproc,extra", [("mnist_cnn", 1, ()), ("mnist_cnn", 1, AUGMENTED), ("mnist_cnn", 2, ()),
                                                pytest.param("resnet_cifar", 2, (), marks=pytest.mark.heavy)])
def test_resume_mid_epoch_is_bitwise_identical(recipe, nproc, extra, tmp_path):
    steps = ["train.max_steps=20", "train.ckpt_every_steps=6", "ckpt.keep_last=10",
             "data.synthetic_train=512", *extra]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    def run(*args):  # one process: the same run in this one
        return run_recipe(*args, nproc=nproc) if nproc > 1 else run_inprocess(*args)
    run(recipe, f"out_dir={full}", *steps)
    # The resumed run starts from the full run's mid-epoch checkpoint and nothing else.
    resume_dir_from(full, 6, resumed)
    proc = run(recipe, f"out_dir={resumed}", *steps)
    assert "resumed from" in proc.stdout and "step 6, epoch 0, batch 6" in proc.stdout
    assert_bitwise(final_weights(full), final_weights(resumed))
    # Logged curves continue: the resumed run logs only steps after 6, with the same values.
    after = [m for m in metrics(full) if m["step"] > 6 and m["split"] == "val"]
    again = [m for m in metrics(resumed) if m["split"] == "val"]
    assert [m["step"] for m in again] == [m["step"] for m in after]
    assert [m["loss"] for m in again] == [m["loss"] for m in after]


def test_resume_mid_epoch_with_repeated_augmentation_and_a_sparse_ema_is_bitwise(tmp_path):
    """data.ra_reps=3 with augmentation (each copy its own crop) and an EMA updated every 4 steps with the
    ramp warm-up: 512 samples / batch 48 = 10 steps per epoch; resumed at step 6, between EMA updates
    (4, 8, 12) and before the epoch ends, the run ends bitwise as the one that never stopped."""
    steps = ["train.max_steps=14", "train.ckpt_every_steps=6", "ckpt.keep_last=10", "data.synthetic_train=512",
             "train.batch_size=48", "data.ra_reps=3", "data.augment=true", "model.hidden=[64]",
             "train.ema_decay=0.9", "train.ema_every_steps=4", "train.ema_warmup=ramp"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_inprocess("mnist_mlp", f"out_dir={full}", *steps)
    resume_dir_from(full, 6, resumed)
    proc = run_inprocess("mnist_mlp", f"out_dir={resumed}", *steps)
    assert "resumed from" in proc.stdout and "step 6, epoch 0, batch 6" in proc.stdout
    assert "data.ra_reps=3: an epoch shows 160 distinct samples, each 3 times" in proc.stdout
    assert_bitwise(final_weights(full), final_weights(resumed))
    ema = [load_file(run / "checkpoints" / "step_00000014")["ema"]["net"] for run in (full, resumed)]
    assert_bitwise(*ema)
    assert int(ema[0]["n_averaged"]) == 3


def test_killed_run_rerun_with_the_same_command_finishes_identically(tmp_path):
    """SIGKILL mid-run, then the same command: resumes from the newest checkpoint."""
    steps = ["train.max_steps=120", "train.ckpt_every_steps=10", "train.log_every_steps=10",
             "data.synthetic_train=2048", "train.eval_every_steps=60"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run_inprocess("mnist_cnn", f"out_dir={ref}", *steps)
    # The run SIGKILLs itself at step 25 (tests/support/faulty.py): killed mid-run at a known step, every time.
    cmd, env = recipe_command("mnist_cnn", f"out_dir={killed}", *steps, fault="kill=0@25")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    newest = max(int(p.name[5:]) for p in (killed / "checkpoints").glob("step_*"))
    assert newest == 20
    again = run_inprocess("mnist_cnn", f"out_dir={killed}", *steps)
    assert f"step {newest}," in again.stdout
    assert_bitwise(final_weights(ref), final_weights(killed))
