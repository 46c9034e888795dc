"""Run recipes under real launchers (torchrun, accelerate launch, deepspeed, sbatch) and read the results."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from support.runs import ROOT, free_port
from support.outputs import metrics

CPU_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           # Open MPI refuses root unless told; CI and containers run as root.
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID", "CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE")


def clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCHER_VARS and not k.startswith(("ACCELERATE_", "SLURM_", "OMPI_", "PMI_"))}
    return {**env, **CPU_ENV, **(extra or {})}


def recipe_args(recipe: str, out_dir: Path | None, *overrides: str, config: str = "debug", device: str = "cpu") -> list[str]:
    args = [str(ROOT / "recipes" / f"{recipe}.py"), "--config", str(ROOT / "recipes" / "configs" / f"{recipe}_{config}.yaml"),
            f"device={device}", "train.progress=false"]
    return args + ([f"out_dir={out_dir}"] if out_dir else []) + list(overrides)


def command(launcher: str, nproc: int = 2, accelerate_config: str = "cpu_multi_process.yaml") -> list[str]:
    """The launcher prefix; the recipe and its arguments follow."""
    port = str(free_port())
    if launcher == "python":
        return [sys.executable]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", port]
    if launcher == "accelerate":  # default: launch/accelerate/cpu_multi_process.yaml, mpirun with 2 slots
        return ["accelerate", "launch", "--config_file", str(ROOT / "launch/accelerate" / accelerate_config),
                "--num_processes", str(nproc), "--main_process_port", port]
    if launcher == "deepspeed":
        return ["deepspeed", "--num_gpus", str(nproc), "--master_port", port]
    raise ValueError(launcher)


def launch(launcher: str, recipe: str, out_dir: Path | None, *overrides: str, nproc: int = 2, timeout: int = 600,
           check: bool = True, config: str = "debug", device: str = "cpu",
           accelerate_config: str = "cpu_multi_process.yaml") -> subprocess.CompletedProcess:
    cmd = command(launcher, nproc, accelerate_config) + recipe_args(recipe, out_dir, *overrides, config=config, device=device)
    # The `deepspeed` launcher picks its accelerator before our runtime can: say CPU for CPU runs.
    env = clean_env({"DS_ACCELERATOR": "cpu"} if device == "cpu" else None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check:
        assert_ok(proc, out_dir, cmd)
    return proc


def assert_ok(proc, out_dir=None, cmd=()) -> None:
    """Launcher exit code 0, i.e. 0 on every rank; otherwise fail with the output."""
    tail = f"\n$ {' '.join(map(str, cmd))}\n--- stdout ---\n{proc.stdout[-5000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"
    assert proc.returncode == 0, f"exit code {proc.returncode}{tail}"


def train_losses(out_dir: Path, key: str = "loss") -> dict[int, float]:
    return {m["step"]: m[key] for m in metrics(out_dir) if m["split"] == "train"}


def state(out_dir: Path, step: int) -> dict:
    return torch.load(Path(out_dir) / "checkpoints" / f"step_{step:08d}" / "state.pt", map_location="cpu", weights_only=True)


def deepspeed_weights(out_dir: Path, step: int, model: str = "net") -> dict[str, torch.Tensor]:
    """Full fp32 weights from a DeepSpeed checkpoint, the documented way (zero_to_fp32)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    where = Path(out_dir) / "checkpoints" / f"step_{step:08d}" / "deepspeed" / model
    return get_fp32_state_dict_from_zero_checkpoint(str(where), tag="state")


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ----------------------------------------------------------------------------- SLURM

def slurm_env(extra: dict | None = None) -> dict:
    """The client environment for a cluster: the single-node one, or the one `extra` names (SLURM_CONF)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    return {**env, **CPU_ENV, "DS_ACCELERATOR": "cpu",
            "SLURM_CONF": os.environ.get("SLURM_CONF", "/tmp/dtrain-slurm/slurm.conf"), **(extra or {})}


def sbatch(template: str, *args: str, options: tuple[str, ...] = (), log: Path, env: dict | None = None) -> str:
    """Submit from the repo root (templates cd to $SLURM_SUBMIT_DIR); the job inherits `env`."""
    cmd = ["sbatch", "--parsable", f"--output={log}", *options, str(ROOT / "slurm" / template), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**slurm_env(), **(env or {})}, cwd=ROOT, timeout=60)
    assert out.returncode == 0, f"sbatch failed: {out.stderr}"
    return out.stdout.strip().split(";")[0]


def job_info(job: str, env: dict | None = None) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=slurm_env(env), timeout=30)
    return dict(tok.split("=", 1) for tok in out.stdout.split() if "=" in tok)


def wait_job(job: str, timeout: float = 300, env: dict | None = None) -> dict[str, str]:
    """Block until the job (and any requeue of it) has finished; its last scontrol record."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job, env)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return info
        time.sleep(1)
    subprocess.run(["scancel", job], env=slurm_env(env))
    raise AssertionError(f"job {job} did not finish in {timeout} s: {job_info(job, env)}")


def assert_job_ok(info: dict, log: Path, out_dir: Path | None) -> str:
    text = log.read_text() if log.exists() else ""
    assert info["JobState"] == "COMPLETED" and info.get("ExitCode") == "0:0", \
        f"job {info.get('JobId')} ended {info['JobState']} ({info.get('ExitCode')}):\n{text[-6000:]}"
    return text


def have_slurm_binaries() -> bool:
    return all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged"))
