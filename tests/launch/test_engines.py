"""One debug config, three engines, each under its own launcher, 2 CPU processes over gloo.

    torchrun --nproc_per_node 2 recipes/mnist_mlp.py ...                         engine=ddp (auto)
    accelerate launch --config_file launch/accelerate/cpu_multi_process.yaml ... engine=accelerate (auto)
    deepspeed --num_gpus 2 recipes/mnist_mlp.py ...                              engine=deepspeed (auto), ZeRO-2

Loss-curve tolerance: 1e-5 relative, per optimizer step. The three engines run the same math on
the same data shards in the same order from the same initial weights (fp32, SGD + momentum,
grad_accum=2): DDP and Accelerate both average gradients with DDP's bucketed all-reduce;
DeepSpeed ZeRO-2 reduce-scatters the same gradients into flat fp32 partitions and steps the
same torch optimizer on them. The only legitimate difference is float summation order inside
collectives (~1e-7 per step, and with 2 ranks a sum of two terms is exact, so in practice the
curves agree bitwise). Real mistakes are orders of magnitude larger: loss not divided by
grad_accum (x2), gradients summed instead of averaged across ranks (x2), a scheduler stepped
twice, or ranks training on the same shard all move the curve by >1e-2 within a few steps.
"""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from common.formats.export import read_export
from support.inprocess import run_inprocess
from support.outputs import final_weights, metrics
from support.launchutil import deepspeed_weights, launch, max_abs_diff, state, train_losses

HAVE_MPI = shutil.which("mpirun") is not None
ACCELERATE_LAUNCHER = "accelerate" if HAVE_MPI else "torchrun"  # torchrun + engine=accelerate without MPI
OVERRIDES = ("train.grad_accum=2", "train.log_every_steps=1")
STEPS = 16  # mnist_mlp_debug: 16 steps, checkpoints at 8 and 16
RTOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    out = {name: root / name for name in ("ddp", "accelerate", "deepspeed")}
    launch("torchrun", "mnist_mlp", out["ddp"], *OVERRIDES)
    extra = () if HAVE_MPI else ("engine=accelerate",)
    launch(ACCELERATE_LAUNCHER, "mnist_mlp", out["accelerate"], *OVERRIDES, *extra)
    launch("deepspeed", "mnist_mlp", out["deepspeed"], *OVERRIDES, "deepspeed_config=launch/deepspeed/zero2.json")
    return out


def test_each_engine_really_ran_two_processes(runs):
    # A misconfigured launch silently runs one process with the whole batch; the checkpoint
    # records the world size and one RNG state per rank, so that cannot pass unnoticed.
    for engine, out in runs.items():
        sd = state(out, STEPS)
        assert sd["config"]["engine"] == engine
        assert sd["world_size"] == 2 and len(sd["rng"]) == 2, (engine, sd["world_size"])
        assert sd["step"] == STEPS


def test_loss_curves_match_across_engines(runs):
    curves = {engine: train_losses(out) for engine, out in runs.items()}
    assert sorted(curves["ddp"]) == list(range(1, STEPS + 1))
    ref = curves["ddp"]
    assert ref[STEPS] < 0.5 * ref[1], ref  # it learns: the comparison is not between flat lines
    for engine in ("accelerate", "deepspeed"):
        assert curves[engine].keys() == ref.keys()
        worst = max(abs(curves[engine][s] - ref[s]) / abs(ref[s]) for s in ref)
        assert worst <= RTOL, f"{engine} differs from ddp by {worst:.2e} relative: {curves[engine]} vs {ref}"
    vals = {e: [m["loss"] for m in metrics(o) if m["split"] == "val"] for e, o in runs.items()}
    for engine in ("accelerate", "deepspeed"):
        assert all(math.isclose(a, b, rel_tol=RTOL) for a, b in zip(vals[engine], vals["ddp"])), vals


def test_final_weights_match_across_engines(runs):
    ddp = final_weights(runs["ddp"])
    assert max_abs_diff(final_weights(runs["accelerate"]), ddp) <= 1e-5
    assert max_abs_diff(deepspeed_weights(runs["deepspeed"], STEPS), ddp) <= 1e-5


def test_deepspeed_checkpoint_is_part_of_our_checkpoint(runs):
    import json
    ckpt = runs["deepspeed"] / "checkpoints" / f"step_{STEPS:08d}"
    files = json.loads((ckpt / "MANIFEST.json").read_text())["files"]
    shards = [f for f in files if f.startswith("deepspeed/net/state/") and "optim_states" in f]
    assert len(shards) == 2, sorted(files)  # one ZeRO partition per rank, each checksummed
    assert "deepspeed/net/zero_to_fp32.py" in files and "state.pt" in files
    sd = state(runs["deepspeed"], STEPS)
    assert sd["engine_owned"] == ["net"] and sd["models"] == {} and sd["optims"] == {}
    assert sd["scheds"]["net"]["last_epoch"] == STEPS  # our scheduler and counters live in state.pt


@pytest.mark.slow
def test_deepspeed_resumes_from_its_checkpoint_exactly(runs, tmp_path):
    """Drop the final checkpoint of the ZeRO-2 run and run the same command again: it must
    resume from step 8 (model, ZeRO optimizer partitions, scheduler, RNG) and end at the
    same weights as the uninterrupted run."""
    out = tmp_path / "ds"
    shutil.copytree(runs["deepspeed"], out)
    shutil.rmtree(out / "checkpoints" / f"step_{STEPS:08d}")
    proc = launch("deepspeed", "mnist_mlp", out, *OVERRIDES, "deepspeed_config=launch/deepspeed/zero2.json")
    assert f"resumed from {out}/checkpoints/step_00000008: step 8" in proc.stdout
    assert train_losses(out) == train_losses(runs["deepspeed"])  # steps 9..16 replayed identically
    assert max_abs_diff(deepspeed_weights(out, STEPS), deepspeed_weights(runs["deepspeed"], STEPS)) == 0.0
    # DeepSpeed's CPU shared-memory all-reduce (a JIT-built op mapping 67 MB a rank, named after the port, never
    # unlinked) is off: the run leaves nothing in /dev/shm.
    port = proc.args[proc.args.index("--master_port") + 1]
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


def test_deepspeed_run_exports_and_evaluates_on_one_process(runs, tmp_path):
    """Both ranks' ZeRO-2 partitions are gathered on one process (after every DeepSpeed file passed the weights_only
    check): the export equals what DeepSpeed's own zero_to_fp32 rebuilds, and --evaluate gives training's figures."""
    out, exported = tmp_path / "ds", tmp_path / "w.safetensors"
    shutil.copytree(runs["deepspeed"], out)
    run_inprocess("mnist_mlp", "--export", str(out), "--to", str(exported), config=None)
    best = json.loads((out / "checkpoints" / "best.json").read_text())["step"]  # what a run directory means
    weights, meta = read_export(exported)
    gathered = deepspeed_weights(out, best)
    assert weights.keys() == gathered.keys() and all(torch.equal(weights[k], gathered[k]) for k in weights)
    assert meta["weights"] == "raw" and meta["step"] == best  # no EMA in this run: the trained weights
    assert "raw weights" in run_inprocess("mnist_mlp", "--evaluate", str(out), config=None).stdout
    val = next(m for m in metrics(out) if m["split"] == "val" and m["step"] == best)
    ev = [m for m in metrics(out) if m["split"] == "eval"][-1]
    assert ev["step"] == best and ev["acc1"] == val["acc1"] and abs(ev["loss"] - val["loss"]) <= 1e-6 * val["loss"]


def test_deepspeed_checkpoint_refuses_another_world_size(runs, tmp_path):
    out = tmp_path / "ds1"
    shutil.copytree(runs["deepspeed"], out)
    proc = launch("python", "mnist_mlp", out, *OVERRIDES, "engine=deepspeed", "train.max_steps=20", nproc=1, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "holds ZeRO partitions for 2 ranks, this run has 1" in proc.stderr


def test_deepspeed_checkpoint_under_ddp_is_a_clear_error(runs, tmp_path):
    out = tmp_path / "ds_to_ddp"
    shutil.copytree(runs["deepspeed"], out)
    proc = launch("python", "mnist_mlp", out, *OVERRIDES, "engine=ddp", "train.max_steps=20", nproc=1, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "  engine: 'deepspeed' -> 'ddp'  (the checkpoint format" in proc.stderr, proc.stderr[-3000:]


def test_ddp_checkpoint_resumes_under_accelerate(runs, tmp_path):
    """ddp and accelerate write the same plain state_dicts: a run can switch engines on resume."""
    out = tmp_path / "switch"
    shutil.copytree(runs["ddp"], out)
    shutil.rmtree(out / "checkpoints" / f"step_{STEPS:08d}")
    proc = launch("torchrun", "mnist_mlp", out, *OVERRIDES, "engine=accelerate")
    assert "resumed from" in proc.stdout and "step 8" in proc.stdout
    assert max_abs_diff(final_weights(out), final_weights(runs["ddp"])) <= 1e-5


GAN_RECIPES = ["gan_mnist"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", GAN_RECIPES)
def test_two_optimizer_gan_under_every_engine(recipe, tmp_path):
    """G and D each get their own DDP wrapper / Accelerate-prepared optimizer / DeepSpeed engine;
    rt.frozen(D) and the deferred DeepSpeed backward keep the recipe's train_step unchanged."""
    curves = {}
    for engine in ("ddp", "accelerate", "deepspeed"):
        out = tmp_path / engine
        launch("torchrun", recipe, out, f"engine={engine}", "train.log_every_steps=1", "train.max_steps=8")
        curves[engine] = {k: train_losses(out, k) for k in ("loss_d", "loss_g")}
        assert len(curves[engine]["loss_g"]) == 8
    for engine in ("accelerate", "deepspeed"):
        for key, ref in curves["ddp"].items():
            worst = max(abs(curves[engine][key][s] - ref[s]) / abs(ref[s]) for s in ref)
            assert worst <= RTOL, (engine, key, worst)
    sd = state(tmp_path / "deepspeed", 8)
    assert sd["engine_owned"] == ["D", "G"]
    assert torch.isfinite(torch.tensor(list(curves["deepspeed"]["loss_g"].values()))).all()
