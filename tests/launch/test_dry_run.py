"""--dry-run under each launcher: the rank/world/device mapping, the engine, and layout errors."""
import re
import shutil

import pytest

from support.launchutil import launch

LAUNCHERS = [  # launcher, processes, engine it implies
    ("python", 1, "ddp"),
    ("torchrun", 2, "ddp"),
    # Under heavy: test_engines.py trains under both (the engine each implies), the contradiction below reads deepspeed's.
    pytest.param("accelerate", 2, "accelerate",
                 marks=[pytest.mark.heavy, pytest.mark.skipif(not shutil.which("mpirun"), reason="accelerate's CPU "
                                                              "launcher needs mpirun (apt-get install openmpi-bin)")]),
    pytest.param("deepspeed", 2, "deepspeed", marks=pytest.mark.heavy),
]


@pytest.mark.parametrize("launcher,nproc,engine", LAUNCHERS)
def test_dry_run_prints_mapping_and_engine(launcher, nproc, engine, tmp_path):
    proc = launch(launcher, "mnist_cnn", tmp_path / "run", "--dry-run", nproc=nproc, timeout=300)
    out = proc.stdout
    rows = re.findall(r"^rank (\d+)/(\d+) local_rank (\d+)/(\d+) host \S+ device (\S+) backend (\S+) launcher (\S+)$", out, re.M)
    assert [(int(r[0]), int(r[1])) for r in rows] == [(i, nproc) for i in range(nproc)], out
    assert {r[4] for r in rows} == {"cpu"} and {r[5] for r in rows} == ({"gloo"} if nproc > 1 else {"none"})
    expected_launcher = {"python": "none", "torchrun": "torchrun", "accelerate": "mpi", "deepspeed": "deepspeed"}[launcher]
    assert {r[6] for r in rows} == {expected_launcher}, out
    assert f"engine: {engine}" in out  # the resolved config
    assert re.search(rf"^engine {engine}: ", out, re.M), out
    assert f"layout ok: {nproc} process(es) on 1 host(s)" in out
    assert not (tmp_path / "run").exists(), "a dry run must not create the run directory"


def test_engine_that_contradicts_the_launcher_is_an_error(tmp_path):
    proc = launch("deepspeed", "mnist_cnn", tmp_path / "run", "engine=accelerate", "--dry-run", check=False)
    assert proc.returncode != 0
    assert "engine=accelerate but the job was started by the `deepspeed` launcher" in proc.stderr + proc.stdout


def test_deepspeed_json_that_contradicts_the_recipe_is_an_error(tmp_path):
    proc = launch("python", "mnist_cnn", tmp_path / "run", "engine=deepspeed", "precision=fp32",
                  "deepspeed_config=launch/deepspeed/zero2_bf16.json", "--dry-run", nproc=1, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "sets bf16.enabled=True but precision=fp32" in proc.stderr


def test_batch_that_does_not_split_over_the_world_is_caught_before_training(tmp_path):
    proc = launch("torchrun", "mnist_cnn", tmp_path / "run", "train.batch_size=30", "train.grad_accum=4",
                  "--dry-run", check=False)
    assert proc.returncode != 0
    assert "must be divisible by world_size x train.grad_accum = 2 x 4 = 8" in proc.stderr
