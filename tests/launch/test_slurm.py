"""The project's own sbatch templates on a real single-node SLURM cluster (tests/launch/slurm_cluster.sh).

The node advertises 4 GPUs that are only a count; the templates run unchanged and the recipes
get CPU-only overrides (device=cpu), 2 processes over gloo. What a GPU cluster adds (NCCL,
several nodes) is listed in slurm/README.md.
"""
import subprocess
import sys
import time

import pytest

from support.runs import ROOT, FAULTY, free_port
from support.outputs import final_weights, metrics
from support.launchutil import (assert_job_ok, launch, max_abs_diff, recipe_args, sbatch, slurm_env, state, wait_job,
                        deepspeed_weights)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

RECIPE = str(ROOT / "recipes" / "mnist_mlp.py")
ONE_NODE_TWO_GPUS = ("--nodes=1", "--gpus-per-node=2", "--cpus-per-task=2", "--time=10")

TEMPLATES = [  # template, sbatch options that fit the test node, engine the run must report
    ("single_node.sbatch", ONE_NODE_TWO_GPUS, "ddp"),
    # heavy: tests/launch/test_two_hosts.py runs these templates on two nodes in the default run
    pytest.param("multi_node.sbatch", ONE_NODE_TWO_GPUS, "ddp", marks=pytest.mark.heavy),
    ("srun_per_gpu.sbatch", ("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=1", "--time=10"), "ddp"),
    pytest.param("accelerate_multi_node.sbatch", ONE_NODE_TWO_GPUS, "accelerate", marks=pytest.mark.heavy),
    pytest.param("deepspeed_multi_node.sbatch", ONE_NODE_TWO_GPUS, "deepspeed", marks=pytest.mark.heavy),
]


def _args(out_dir, *extra):
    return recipe_args("mnist_mlp", out_dir, *extra)[1:]  # the template gets the recipe path first


@pytest.mark.parametrize("template,options,engine", TEMPLATES, ids=[getattr(t, "values", t)[0] for t in TEMPLATES])
def test_template_trains_two_processes(template, options, engine, tmp_path):
    out, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(template, RECIPE, *_args(out), options=options, log=log)
    text = assert_job_ok(wait_job(job), log, out)
    assert "dtrain: step exited with 0" in text, text[-3000:]
    sd = state(out, 16)
    assert sd["world_size"] == 2 and len(sd["rng"]) == 2, text[-3000:]
    assert sd["config"]["engine"] == engine
    rows = metrics(out)
    assert [r["step"] for r in rows if r["split"] == "val"] == [8, 16]
    if engine == "deepspeed":
        assert deepspeed_weights(out, 16)  # two ZeRO partitions reassembled


def test_fsdp_runs_through_the_multi_node_template(tmp_path):
    """engine=fsdp has no template of its own: it is an override to the torchrun template (slurm/README.md)."""
    out, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch("multi_node.sbatch", RECIPE, *_args(out, "engine=fsdp"), options=ONE_NODE_TWO_GPUS, log=log)
    assert_job_ok(wait_job(job), log, out)
    sd = state(out, 16)
    assert sd["config"]["engine"] == "fsdp" and sd["world_size"] == 2 and sd["engine_owned"] == ["net"]
    assert sorted(p.name for p in (out / "checkpoints" / "step_00000016" / "fsdp").glob("*.distcp")) == \
        ["__0_0.distcp", "__1_0.distcp"]


def test_job_array_sweep_runs_each_line(tmp_path):
    sweep = tmp_path / "sweep.txt"
    sweep.write_text("# two settings\noptim.lr=0.01\n\noptim.lr=0.2 train.max_steps=8\n")
    env_root = tmp_path / "runs"
    job = sbatch("sweep.sbatch", str(sweep), RECIPE, *_args(None), options=("--array=0-1", *ONE_NODE_TWO_GPUS),
                 log=tmp_path / "sweep-%a.out", env={"DTRAIN_OUT_ROOT": str(env_root)})
    for task, lr, steps in ((0, 0.01, 16), (1, 0.2, 8)):
        out = env_root / f"mnist_mlp_{job}_{task}"
        text = assert_job_ok(wait_job(f"{job}_{task}"), tmp_path / f"sweep-{task}.out", out)
        assert f"sweep task {task}: optim.lr={lr}" in text
        sd = state(out, steps)
        assert sd["config"]["optim"]["lr"] == lr and sd["world_size"] == 2, text[-2000:]
    assert len(list(env_root.iterdir())) == 2


def test_layout_check_stops_torchrun_started_by_several_srun_tasks():
    """`srun --ntasks-per-node=2 torchrun --nproc_per_node=2 ...` starts 4 processes on a node
    meant to hold 2: the job stops in the layout check, before any training."""
    port = free_port()
    cmd = ["srun", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=5",
           sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=layout", RECIPE, *_args(None), "--dry-run"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=slurm_env(), cwd=ROOT)
    assert proc.returncode != 0
    assert "process layout is wrong" in proc.stderr, proc.stderr[-3000:]
    assert "srun started 2 tasks on this node and each started its own launcher (torchrun)" in proc.stderr
    assert "local ranks [0, 0, 1, 1]" in proc.stderr


# The run is held at step 31 until the signal (below); the preemption checkpoint comes within 20 steps.
PREEMPT_ARGS = ("train.max_steps=150", "train.log_every_steps=10", "train.eval_every_steps=75",
                "train.ckpt_every_steps=100", "model.hidden=[256]")


def test_preempted_job_checkpoints_requeues_resumes_and_matches(tmp_path):
    """The preemption warning (what --signal=B:USR1@120 sends before the time limit, sent here by
    hand) reaches the workers through torchrun; they agree, checkpoint at the next step boundary
    and exit 75; the job requeues itself, runs again with the same job id and out_dir, resumes,
    and finishes with exactly the weights of an uninterrupted run."""
    out, log = tmp_path / "run", tmp_path / "job.out"
    # tests/support/faulty.py runs the recipe and holds both ranks at step 31 until the signal comes: the
    # run cannot finish before the test signals it, however slow the machine.
    job = sbatch("single_node.sbatch", str(FAULTY), *_args(out, *PREEMPT_ARGS),
                 options=ONE_NODE_TWO_GPUS, log=log, env={"DTRAIN_FAULT": "mnist_mlp pause=31"})
    deadline = time.time() + 300  # a limit for a job that never starts, not a timing of the run
    while not all(f"faulty: rank {r} paused at step 31" in (log.read_text() if log.exists() else "") for r in (0, 1)):
        assert time.time() < deadline, f"job {job} never reached step 31:\n{log.read_text() if log.exists() else ''}"
        time.sleep(0.3)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, env=slurm_env())
    info = wait_job(job, timeout=300)
    text = assert_job_ok(info, log, out)
    assert info["Restarts"] == "1", info
    assert "dtrain: preemption signal" in text and f"requeueing job {job}" in text, text[-4000:]
    assert "preempted: checkpoint at step " in text, text[-4000:]
    saved = int(text.split("preempted: checkpoint at step ")[1].split()[0])
    assert 30 <= saved < 100  # the preemption's checkpoint, not the scheduled one
    assert f"resumed from {out}/checkpoints/step_{saved:08d}: step {saved}" in text, text[-4000:]
    assert "restart 1" in text  # the second run really was the requeued job
    reference = tmp_path / "uninterrupted"
    launch("torchrun", "mnist_mlp", reference, *PREEMPT_ARGS)
    assert max_abs_diff(final_weights(out), final_weights(reference)) == 0.0
    # The log continues without gaps or duplicates across the restart, with the same losses.
    losses = [(r["step"], r["loss"]) for r in metrics(out) if r["split"] == "train"]
    assert losses == [(r["step"], r["loss"]) for r in metrics(reference) if r["split"] == "train"]
