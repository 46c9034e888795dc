"""Reliability: every way a long run dies, with real processes. README "Reliability" lists them."""
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from support.inprocess import run_inprocess
from support.runs import ROOT, FAULTY, free_port, recipe_command, run_recipe
from support.outputs import final_weights, last_checkpoint_step, metrics

from common.train.preempt import PREEMPT_CHECK_STEPS

pytestmark = pytest.mark.slow
EXIT_PREEMPTED = 75  # the documented exit code (README), not the constant: a changed constant must fail here
LONG = ["train.max_steps=60", "train.ckpt_every_steps=10", "train.log_every_steps=10",
        "train.eval_every_steps=30", "data.synthetic_train=2048", "ckpt.keep_last=10"]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def faulty(recipe, fault, *overrides, nproc=1, timeout=180):
    args = ["--config", str(ROOT / "recipes" / "configs" / f"{recipe}_debug.yaml"), "device=cpu",
            "train.progress=false", *overrides]
    script = [str(FAULTY), recipe, fault]
    cmd = [sys.executable, *script, *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
         *script, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def reference_2proc(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref2")
    run_recipe("mnist_cnn", f"out_dir={out}", *LONG, nproc=2)
    return out


@pytest.fixture(scope="module")
def reference_1proc(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref1")
    run_inprocess("mnist_cnn", f"out_dir={out}", *LONG)
    return out


# 1. A worker is SIGKILLed; torchrun --max-restarts=1 restarts the group, which resumes.
# The faults fire at a known step from inside the run (tests/support/faulty.py): no polling race with a
# run that might finish before the test gets to kill or signal it.
def test_killed_worker_group_restarts_and_ends_identical(reference_2proc, tmp_path):
    out = tmp_path / "run"
    cmd, env = recipe_command("mnist_cnn", f"out_dir={out}", *LONG, nproc=2, fault="kill=1@25")
    # c10d rendezvous: each restart round gets fresh keys (the static --master_port store can hand
    # the new group the dead worker's old address).
    i = cmd.index("--master_port")
    cmd[i:i + 2] = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--max-restarts=1"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                          timeout=300)
    log = proc.stdout
    assert proc.returncode == 0, log[-3000:]
    assert "resumed from" in log, log[-3000:]  # only a restarted attempt resumes
    resumed_at = int(log.split("resumed from")[1].split("step ")[1].split(",")[0])
    assert resumed_at == 20  # killed at step 25: the work since the last checkpoint is lost, nothing more
    assert same(final_weights(reference_2proc), final_weights(out))


# 2. Preemption: SIGUSR1 / SIGTERM -> checkpoint at the next step boundary, exit 75, re-run resumes.
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_preemption_signal_checkpoints_exits_75_and_resumes_identical(sig, reference_1proc, tmp_path):
    out = tmp_path / "run"
    cmd, env = recipe_command("mnist_cnn", f"out_dir={out}", *LONG, fault=f"{sig.name}=0@15")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                          timeout=300)
    log = proc.stdout
    assert proc.returncode == EXIT_PREEMPTED, log[-3000:]
    # one process acts at the boundary of the step that got the signal
    assert last_checkpoint_step(out) == 15 and "preempted: checkpoint at step 15" in log, log[-3000:]
    ends = lambda: [(r["status"], r["step"], r["reason"]) for r in metrics(out) if r["split"] == "end"]  # noqa: E731
    assert ends() == [("preempted", 15, "preempted")]  # the last row says how the run ended
    run_inprocess("mnist_cnn", f"out_dir={out}", *LONG)
    assert same(final_weights(reference_1proc), final_weights(out))
    assert [status for status, _, _ in ends()] == ["finished"]  # the resumed run's end replaces it


def test_signal_to_one_rank_stops_all_ranks_together(reference_2proc, tmp_path):
    out = tmp_path / "run"
    cmd, env = recipe_command("mnist_cnn", f"out_dir={out}", *LONG, nproc=2, fault="SIGUSR1=1@15")  # rank 1 only
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                          timeout=300)
    log = proc.stdout
    # The workers exit 75 after one agreed checkpoint (torchrun itself reports a failure).
    assert "exitcode  : 75" in log, log[-3000:]
    stopped = last_checkpoint_step(out)
    assert f"preempted: checkpoint at step {stopped}" in log, log[-3000:]
    # agreed at a PREEMPT_CHECK_STEPS boundary, within two of them of the signal (common/loop.py)
    assert stopped % PREEMPT_CHECK_STEPS == 0 and 15 < stopped <= 15 + 2 * PREEMPT_CHECK_STEPS, stopped
    run_recipe("mnist_cnn", f"out_dir={out}", *LONG, nproc=2)
    assert same(final_weights(reference_2proc), final_weights(out))


# 3. Corrupt newest checkpoint: named in a warning, the previous valid one is used.
def test_corrupt_newest_checkpoint_falls_back(reference_1proc, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_1proc / "checkpoints", out / "checkpoints")
    for p in (out / "checkpoints").glob("step_*"):
        if int(p.name[5:]) > 40:
            shutil.rmtree(p)
    f = out / "checkpoints" / "step_00000040" / "state.pt"
    f.write_bytes(f.read_bytes()[:1000])  # truncated
    proc = run_inprocess("mnist_cnn", f"out_dir={out}", *LONG)
    assert "skipping checkpoint" in proc.stderr and "step_00000040" in proc.stderr
    assert "resumed from" in proc.stdout and "step_00000030" in proc.stdout
    assert same(final_weights(reference_1proc), final_weights(out))


# 4. Write failure: out_dir that cannot be created or written.
def test_unwritable_out_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    p = run_recipe("mnist_cnn", f"out_dir={blocker / 'run'}", check=False)
    assert p.returncode == 2 and "is not writable" in p.stderr and "choose another out_dir" in p.stderr


# 5. Non-finite loss.
def test_fp16_scaler_skips_a_non_finite_step(tmp_path):
    out = tmp_path / "run"
    p = faulty("mnist_cnn", "nan_at=3", f"out_dir={out}", "precision=fp16", "train.max_steps=4", "train.ckpt_every_steps=4")
    assert p.returncode == 0, p.stderr[-3000:]
    from common.formats.checkpoint import load_file
    sd = load_file(out / "checkpoints" / f"step_{last_checkpoint_step(out):08d}")
    assert sd["engine"]["scaler"]["scale"] < 65536.0  # the scaler backed off: the NaN step was skipped
    assert all(torch.isfinite(v).all() for v in sd["models"]["net"].values())


def test_diverged_run_stops_naming_the_step_without_checkpointing_nan(tmp_path):
    out = tmp_path / "run"
    p = faulty("mnist_cnn", "nan_from=5", f"out_dir={out}", "train.max_nonfinite_steps=3",
               "train.ckpt_every_steps=4", "train.log_every_steps=8")
    assert p.returncode == 2
    assert "weights are not finite at step 8" in p.stderr or "up to step 7" in p.stderr, p.stderr[-2000:]
    assert last_checkpoint_step(out) == 4
    from common.formats.checkpoint import load_file
    sd = load_file(out / "checkpoints" / "step_00000004")
    assert all(torch.isfinite(v).all() for v in sd["models"]["net"].values())


def test_repeated_nan_trips_the_guard_with_its_message(tmp_path):
    p = faulty("mnist_cnn", "nan_from=5", f"out_dir={tmp_path / 'run'}", "train.max_nonfinite_steps=3",
               "train.ckpt_every_steps=100", "train.log_every_steps=8")
    assert p.returncode == 2 and "for 3 steps in a row, up to step 7" in p.stderr, p.stderr[-2000:]


# 6. A rank raises: the whole group goes down with the original traceback, no hang.
def test_exception_on_one_rank_brings_the_group_down(tmp_path):
    # A hang would run into the timeout (TimeoutExpired fails the test); how fast it went down is not asserted.
    p = faulty("mnist_cnn", "raise=1@3", f"out_dir={tmp_path / 'run'}", nproc=2, timeout=240)
    assert p.returncode != 0
    assert "RuntimeError: injected fault on rank 1 at step 3" in p.stderr + p.stdout


# 7. Resume on a different world size.
def test_resume_with_fewer_processes_continues_the_same_global_batch(tmp_path):
    common = ["model.dropout=0", "train.max_steps=12", "train.ckpt_every_steps=6", "ckpt.keep_last=10"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    run_recipe("mnist_mlp", f"out_dir={ref}", *common, nproc=2)
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref / "checkpoints" / "step_00000006", out / "checkpoints" / "step_00000006")
    p = run_inprocess("mnist_mlp", f"out_dir={out}", *common)
    assert "written with 2 processes, this run has 1" in p.stdout and "step 6, epoch 0, batch 6" in p.stdout
    a, b = final_weights(ref), final_weights(out)
    for k in a:  # same samples in the same global batches; only the float summation order differs
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_resume_on_a_world_size_that_does_not_divide_the_batch_is_refused(tmp_path):
    p = run_recipe("mnist_mlp", f"out_dir={tmp_path}", "--dry-run", nproc=3, check=False)
    assert p.returncode != 0 and "must be divisible by world_size x train.grad_accum = 3 x 1 = 3" in p.stderr


def test_resume_with_another_global_batch_is_refused(reference_1proc, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_1proc / "checkpoints", out / "checkpoints")
    p = run_recipe("mnist_cnn", f"out_dir={out}", *LONG, "train.batch_size=64", check=False)
    assert p.returncode == 2 and "  train.batch_size: 32 -> 64  (the global batch" in p.stderr, p.stderr
