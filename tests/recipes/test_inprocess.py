"""support.inprocess.run_inprocess, which most recipe tests use: a run in the test process is bitwise the run
of a recipe process, and leaves the test process as it found it."""
import logging
import os
import random
import signal
import sys

import numpy as np
import torch

from support.inprocess import SIGNALS, run_inprocess
from support.outputs import final_weights, metrics
from support.runs import run_recipe

STEPS = ("train.max_steps=4", "train.eval_every_steps=4", "train.ckpt_every_steps=4", "train.log_every_steps=1")


def process_state() -> dict:
    return {"env": dict(os.environ), "cwd": os.getcwd(), "argv": list(sys.argv), "threads": torch.get_num_threads(),
            "dtype": torch.get_default_dtype(), "deterministic": torch.are_deterministic_algorithms_enabled(),
            "torch_rng": torch.get_rng_state().tolist(), "random": random.getstate(),
            "numpy": np.random.get_state()[1].tolist(), "signals": {s: signal.getsignal(s) for s in SIGNALS},
            "logging": list(logging.getLogger().handlers), "dist": torch.distributed.is_initialized()}


def test_an_in_process_run_is_the_process_run_and_restores_the_process(tmp_path):
    torch.manual_seed(123)  # a state of the caller's own, which the run's seeding must not leave changed
    before = process_state()
    inproc = run_inprocess("mnist_cnn", f"out_dir={tmp_path / 'in'}", *STEPS)
    assert process_state() == before
    assert not (tmp_path / "in" / "run.lock").exists()  # released, as a process's exit releases it
    run_recipe("mnist_cnn", f"out_dir={tmp_path / 'proc'}", *STEPS)
    a, b = final_weights(tmp_path / "in"), final_weights(tmp_path / "proc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[m["loss"] for m in metrics(tmp_path / d) if m["split"] != "end"] for d in ("in", "proc")]
    assert len(losses[0]) == 5 and losses[0] == losses[1]  # 4 train rows and 1 val row, equal to the last bit
    assert [m["status"] for m in metrics(tmp_path / "in") if m["split"] == "end"] == ["finished"]  # the last row
    assert inproc.returncode == 0 and "run mnist_cnn: fresh" in inproc.stdout and "finished: step 4 of 4" in inproc.stdout
    assert inproc.result["acc1"] == metrics(tmp_path / "in")[-2]["acc1"]  # the final metrics run() returned


def test_a_user_error_is_exit_2_with_its_line_on_stderr(tmp_path):
    before = process_state()
    p = run_inprocess("mnist_mlp", f"out_dir={tmp_path / 'run'}", "train.batch_size=0", check=False)
    assert process_state() == before
    assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1
    assert p.stderr.startswith("config error: config key 'train.batch_size'")
