"""engine=fsdp (FSDP2 + DCP checkpoints) against engine=ddp, on 2 CPU processes over gloo.

Tolerance fsdp vs ddp: 1e-4 relative on each step's loss, 1e-5 absolute on the final weights (largest
weight ~0.08). Both engines run the same math on the same shards from the same initial weights (fp32,
SGD + momentum, grad_accum=2, clipping at 1.0, EMA): DDP all-reduces and averages each gradient, FSDP2
reduce-scatters (gloo: an all-reduce, then each rank keeps its slice) and averages it; with two ranks
a sum of two terms is exact, and without clipping the runs agree bitwise. The clipping norm is the same
global norm but summed in another order (per-shard sums of squares, then across ranks), so the clip
factor differs in its last bit at each step (~1e-7 relative), and 16 steps at lr 0.05 carry that to
~1e-5 relative in the loss and ~3e-7 in the weights (measured). Real faults are orders of magnitude
larger: gradients not averaged (x2), a norm clipped per shard instead of globally, a micro-batch
reduced twice, or an optimizer left pointing at the unsharded parameters (no update at all).
"""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from common.config import UserError
from common.engines.fsdp import read_full_weights
from common.formats.checkpoint import load_file
from common.lifecycle import deployed
from support.inprocess import run_inprocess
from support.runs import ROOT, free_port, recipe_command, run_recipe
from support.outputs import final_weights, metrics

# 768 samples / global batch 48 = 16 steps, one epoch; 48 divides by 1, 2 and 3 processes x grad_accum 2.
# No dropout: its per-rank random streams restart when the world size changes (the run warns).
BASE = ("train.batch_size=48", "data.synthetic_train=768", "train.grad_accum=2", "train.clip_grad_norm=1.0",
        "train.ema_decay=0.9", "model.dropout=0", "train.log_every_steps=1", "ckpt.keep_last=10")
STEPS = 16  # checkpoints at 8 and 16 (mnist_mlp_debug: ckpt_every_steps=8)


def ckpt(out, step):
    return out / "checkpoints" / f"step_{step:08d}"


def losses(out, key="loss"):
    return {m["step"]: m[key] for m in metrics(out) if m["split"] == "train"}


def max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def close(curve, ref, steps, rtol=1e-4):
    worst = max(abs(curve[s] - ref[s]) / abs(ref[s]) for s in steps)
    assert worst <= rtol, f"{worst:.2e} relative: {curve} vs {ref}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    out = {e: root / e for e in ("ddp", "fsdp")}
    for engine, o in out.items():
        run_recipe("mnist_mlp", f"out_dir={o}", f"engine={engine}", *BASE, nproc=2)
    return out


def worker(*args, nproc):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(free_port()), str(ROOT / "tests" / "support" / "fsdp_worker.py"), *args]
    env = recipe_command("mnist_mlp")[1]
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'tests'}:{env.get('PYTHONPATH', '')}"  # support.runs, which imports bench
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("fsdp_worker: "))[13:])


def debug_args(*overrides):
    return ["--config", str(ROOT / "recipes/configs/mnist_mlp_debug.yaml"), "device=cpu", "train.progress=false",
            *overrides]


def test_fsdp_equals_ddp_and_checkpoints_are_sharded(runs):
    ref, curve = losses(runs["ddp"]), losses(runs["fsdp"])
    assert sorted(curve) == list(range(1, STEPS + 1)) and ref[STEPS] < 0.5 * ref[1]
    close(curve, ref, ref)
    assert max_abs_diff(read_full_weights(ckpt(runs["fsdp"], STEPS))["net"], final_weights(runs["ddp"])) <= 1e-5
    sd = load_file(ckpt(runs["fsdp"], STEPS))
    assert sd["world_size"] == 2 and sd["engine_owned"] == ["net"] and sd["models"] == {} and sd["optims"] == {}
    assert max_abs_diff(sd["ema"]["net"], load_file(ckpt(runs["ddp"], STEPS))["ema"]["net"]) <= 1e-5
    files = json.loads((ckpt(runs["fsdp"], STEPS) / "MANIFEST.json").read_text())["files"]
    assert {"fsdp/.metadata", "fsdp/__0_0.distcp", "fsdp/__1_0.distcp", "state.pt"} <= set(files), files


def test_resume_on_the_same_world_size_is_bitwise(runs, tmp_path):
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpt(runs["fsdp"], 8), ckpt(out, 8))
    proc = run_recipe("mnist_mlp", f"out_dir={out}", "engine=fsdp", *BASE, nproc=2)
    assert "step 8, epoch 0, batch 8" in proc.stdout
    assert losses(out) == {s: v for s, v in losses(runs["fsdp"]).items() if s > 8}
    a, b = read_full_weights(ckpt(out, STEPS))["net"], read_full_weights(ckpt(runs["fsdp"], STEPS))["net"]
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.parametrize("nproc", [1, pytest.param(3, marks=pytest.mark.heavy)])
def test_resume_on_another_world_size(runs, tmp_path, nproc):
    """A 2-process checkpoint loads into 1 or 3 processes with the saved weights exactly (DCP reshards),
    and training continues with the same global batches: the same losses as the 2-process run."""
    got = worker("loaded", str(ckpt(runs["fsdp"], 8)), *debug_args("engine=fsdp", *BASE), nproc=nproc)
    assert got["world"] == nproc and got["step"] == 8 and got["exact"], got
    assert got["local_numel"] < got["full_numel"] or nproc == 1, got  # each rank holds a shard, not a copy
    out = tmp_path / f"to{nproc}"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpt(runs["fsdp"], 8), ckpt(out, 8))
    proc = run_recipe("mnist_mlp", f"out_dir={out}", "engine=fsdp", *BASE, nproc=nproc)
    assert "written with 2 processes" in proc.stdout and "step 8, epoch 0, batch 8" in proc.stdout
    close(losses(out), losses(runs["fsdp"]), range(9, STEPS + 1))
    assert max_abs_diff(read_full_weights(ckpt(out, STEPS))["net"],
                        read_full_weights(ckpt(runs["fsdp"], STEPS))["net"]) <= 1e-5


@pytest.mark.heavy
def test_activation_checkpointing_under_fsdp_is_bitwise(runs, tmp_path):
    """The blocks are recomputed inside FSDP's gathered forward/backward: the same run, bit for bit."""
    proc = run_recipe("mnist_mlp", f"out_dir={tmp_path}", "engine=fsdp", *BASE, "train.activation_checkpointing=true",
                      nproc=2)
    assert "activation checkpointing: 3 blocks" in proc.stdout
    a, b = read_full_weights(ckpt(tmp_path, STEPS))["net"], read_full_weights(ckpt(runs["fsdp"], STEPS))["net"]
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.heavy
def test_kill_inside_an_async_write_leaves_no_checkpoint_and_rerun_finishes_identically(runs, tmp_path):
    """ckpt.async_save: rank 0 is SIGKILLed inside the write of step 8, after its shard is on disk. Step 8
    must not become a checkpoint; the same command resumes from step 4 and ends where the uninterrupted run did."""
    out = tmp_path / "killed"
    args = (f"out_dir={out}", "engine=fsdp", *BASE, "ckpt.async_save=true", "train.ckpt_every_steps=4")
    cmd, env = recipe_command("mnist_mlp", *args, nproc=2, fault="kill_in_write=0@8")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode != 0 and "killed inside the write of step 8" in proc.stdout, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000004"]
    assert list((out / "checkpoints").glob(".shards-step_00000008-*"))  # the write was really under way
    again = run_recipe("mnist_mlp", *args, nproc=2)
    assert "step 4, epoch 0, batch 4" in again.stdout
    assert not list((out / "checkpoints").glob(".shards-*"))
    a, b = read_full_weights(ckpt(out, STEPS))["net"], read_full_weights(ckpt(runs["fsdp"], STEPS))["net"]
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.heavy
def test_sigkill_and_rerun(runs, tmp_path):
    out = tmp_path / "sigkill"
    args = (f"out_dir={out}", "engine=fsdp", *BASE)
    cmd, env = recipe_command("mnist_mlp", *args, nproc=2, fault="kill=1@12")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode != 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000008"]
    assert "step 8, epoch 0, batch 8" in run_recipe("mnist_mlp", *args, nproc=2).stdout
    a, b = read_full_weights(ckpt(out, STEPS))["net"], read_full_weights(ckpt(runs["fsdp"], STEPS))["net"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_accumulation_reduce_scatters_only_on_the_final_micro_step():
    """Observed with torch.profiler around each micro-step: the c10d collectives that really ran."""
    got = worker("accum", *debug_args("engine=fsdp", "train.grad_accum=4"), nproc=2)
    rs = [m.get("c10d::_reduce_scatter_base_", 0) + m.get("c10d::reduce_scatter_", 0) for m in got["micro_steps"]]
    assert rs[:3] == [0, 0, 0] and rs[3] > 0, got  # mnist_mlp: 3 Linear blocks (the root holds no parameters)
    # Weights stay gathered after a non-final backward: later forwards all-gather nothing (measured: 6, then 3
    # per micro-step, the backward's re-gather under fsdp.reshard_after_forward=true).
    ag = [m.get("c10d::_allgather_base_", 0) + m.get("c10d::allgather_", 0) for m in got["micro_steps"]]
    assert all(a < ag[0] for a in ag[1:]), got
    assert got["grads_cleared_after_step"], got


@pytest.mark.heavy
def test_fp16_overflow_on_one_rank_skips_the_step_on_every_rank():
    """precision=fp16: an inf in one element of rank 0's gradient shard (rank 1 sees finite gradients)
    must skip the optimizer step on both ranks and halve the loss scale on both, or the ranks' shards
    stop belonging to one model. (The engine's ShardedGradScaler all-reduces found_inf; on torch 2.14
    a plain GradScaler also passes, its unscale op on DTensor gradients reducing found_inf over the mesh.)"""
    got = worker("overflow", *debug_args("engine=fsdp", "precision=fp16"), nproc=2)
    assert [r["stepped"] for r in got["ranks"]] == [False, False], got
    assert [r["scale"] for r in got["ranks"]] == [got["scale_before"] / 2] * 2, got


@pytest.mark.heavy
def test_gan_on_fsdp_equals_ddp(tmp_path):
    """Two sharded models, two optimizers, the frozen-D G step: the same curves as under ddp."""
    curves = {}
    for engine in ("ddp", "fsdp"):
        run_recipe("gan_mnist", f"out_dir={tmp_path / engine}", f"engine={engine}", "train.log_every_steps=1",
                   "train.max_steps=8", nproc=2)
        curves[engine] = {k: losses(tmp_path / engine, k) for k in ("loss_d", "loss_g")}
    for key, ref in curves["ddp"].items():
        assert len(ref) == 8
        close(curves["fsdp"][key], ref, ref)
    weights = read_full_weights(ckpt(tmp_path / "fsdp", 8))
    assert set(weights) == {"G", "D"}
    assert max_abs_diff(weights["D"], final_weights(tmp_path / "ddp", "D")) <= 1e-5


def test_read_full_weights_names_a_checkpoint_of_another_engine(runs):
    with pytest.raises(UserError, match="not written by engine=fsdp"):
        read_full_weights(ckpt(runs["ddp"], STEPS))


def test_an_fsdp_checkpoint_exports_to_pt2(runs, tmp_path):
    """The sharded checkpoint, gathered on one process, as a torch.export program that passed its check
    against eager and holds exactly the checkpoint's weights."""
    to = tmp_path / "m.pt2"
    run_inprocess("mnist_mlp", "--export", str(runs["fsdp"]), "--to", str(to), "--weights", "raw", config=None)
    forward, meta = deployed.load(to)
    assert meta["check"]["max_abs_diff"] <= meta["check"]["tolerance"] and meta["weights"] == "raw"
    program = torch.export.load(str(to)).module().state_dict()
    gathered = read_full_weights(ckpt(runs["fsdp"], meta["step"]))["net"]
    assert program.keys() == gathered.keys() and all(torch.equal(program[k], gathered[k]) for k in program)
