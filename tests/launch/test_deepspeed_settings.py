"""The DeepSpeed JSON's content is part of what a resume compares, not only its path: editing the file in
place to another ZeRO stage is refused on every rank before anything is written, a bucket size takes effect
and is logged. 2 processes on CPU (gloo), as tests/launch/test_engines.py runs DeepSpeed."""
from __future__ import annotations

import re
import shutil

import pytest

from support.runs import ROOT, recipe_command, run_ranks
from support.launchutil import launch

OVERRIDES = ("train.max_steps=8", "train.log_every_steps=4", "train.eval_every_steps=8", "train.ckpt_every_steps=4")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds_settings")
    config = root / "ds.json"
    shutil.copy(ROOT / "launch" / "deepspeed" / "zero2.json", config)
    launch("torchrun", "mnist_mlp", root / "run", *OVERRIDES, "train.max_steps=4", "engine=deepspeed",
           f"deepspeed_config={config}")
    return root / "run", config


@pytest.mark.parametrize("stage", [pytest.param(3, marks=pytest.mark.heavy), 1])  # the check is stage-blind
def test_another_zero_stage_in_the_same_json_is_refused_on_every_rank(run, tmp_path, stage):
    out, config = run
    original = config.read_text()
    try:
        config.write_text(original.replace('"stage": 2', f'"stage": {stage}'))  # edited in place: the same path
        before = sorted(p.relative_to(out) for p in out.rglob("*") if "run.lock" not in p.name)
        cmd, env = recipe_command("mnist_mlp", f"out_dir={out}", *OVERRIDES, "engine=deepspeed",
                                  f"deepspeed_config={config}", nproc=2)
        codes, p = run_ranks(cmd, env)  # each rank's own exit code
    finally:
        config.write_text(original)
    assert codes == [2, 2], (codes, p.stderr[-3000:])
    assert "AssertionError" not in p.stderr and "deepspeed/runtime" not in p.stderr  # DeepSpeed never loaded it
    refusals = [line for line in p.stderr.splitlines() if line.startswith("error: cannot resume from")]
    assert len(refusals) == 2, p.stderr[-3000:]  # each rank says it
    assert f"  deepspeed_config:zero_optimization.stage: 2 -> {stage}  (the ZeRO stage the partitions were saved " \
           "with)" in p.stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*") if "run.lock" not in p.name) == before


def test_a_bucket_size_change_resumes_and_is_logged(run, tmp_path):
    out, config = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    edited = tmp_path / "ds.json"  # another file too: its content, not its path, is what is compared
    edited.write_text(config.read_text().replace('"reduce_bucket_size": 50000000', '"reduce_bucket_size": 20000000'))
    p = launch("torchrun", "mnist_mlp", copy, *OVERRIDES, "engine=deepspeed", f"deepspeed_config={edited}")
    changed = re.search(r"changed since the checkpoint, in effect from now: (.*)", p.stdout)
    assert changed, p.stdout[-3000:]
    assert "deepspeed_config:zero_optimization.reduce_bucket_size 50000000 -> 20000000" in changed.group(1)
    assert "resumed from" in p.stdout and (copy / "checkpoints" / "step_00000008").is_dir()
