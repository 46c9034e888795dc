"""slurm/sweep.sbatch with a user out_dir=: every array task gets its own run directory (DIR_task<i>),
so tasks never lock each other out or prune each other's checkpoints. Real SLURM (tests/launch/conftest.py)."""
import pytest

from support.runs import ROOT
from support.launchutil import assert_job_ok, recipe_args, sbatch, state, wait_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def test_array_tasks_with_one_user_out_dir_get_one_directory_each(tmp_path):
    sweep = tmp_path / "sweep.txt"
    sweep.write_text("optim.lr=0.01\noptim.lr=0.2\n")
    shared = tmp_path / "shared"
    args = recipe_args("mnist_mlp", shared, "train.max_steps=8")[1:]
    job = sbatch("sweep.sbatch", str(sweep), str(ROOT / "recipes" / "mnist_mlp.py"), *args,
                 options=("--array=0-1", "--nodes=1", "--gpus-per-node=1", "--cpus-per-task=1", "--time=10"),
                 log=tmp_path / "sweep-%a.out")
    for task, lr in ((0, 0.01), (1, 0.2)):
        out = tmp_path / f"shared_task{task}"
        assert_job_ok(wait_job(f"{job}_{task}"), tmp_path / f"sweep-{task}.out", out)
        assert state(out, 8)["config"]["optim"]["lr"] == lr
    assert not shared.exists()
