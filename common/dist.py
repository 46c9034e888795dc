"""Process-group setup that works unchanged under python, torchrun and srun.

Where the ranks come from, in order:
  torchrun / accelerate / deepspeed launchers: RANK, WORLD_SIZE, LOCAL_RANK (env://)
  srun one task per GPU, no torchrun:          SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID
  anything else (plain `python`):              a single process, no process group
"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = "none"  # none | torchrun | slurm
    device: torch.device = torch.device("cpu")
    backend: str = ""  # "" when no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        host = os.uname().nodename
        return (f"rank {self.rank}/{self.world_size} local_rank {self.local_rank}/{self.local_world_size} "
                f"host {host} device {self.device} backend {self.backend or 'none'} launcher {self.launcher}")


def expand_nodelist(nodelist: str) -> list[str]:
    """'gpu[01-03,07],cpu5' -> ['gpu01', 'gpu02', 'gpu03', 'gpu07', 'cpu5'] (SLURM's compact form)."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{len(lo)}d}")
    return hosts


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist],
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return expand_nodelist(nodelist)[0]


def detect(env=os.environ) -> DistInfo:
    """Rank layout from the environment, without touching any process group."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                        local_rank=int(env.get("LOCAL_RANK", 0)),
                        local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
                        launcher="torchrun")
    # SLURM_STEP_NUM_TASKS exists only inside an `srun` step: a batch script that runs
    # `python` directly is one process even when the job asked for many tasks.
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return DistInfo(rank=int(env["SLURM_PROCID"]), world_size=int(env["SLURM_STEP_NUM_TASKS"]),
                        local_rank=int(env.get("SLURM_LOCALID", 0)),
                        local_world_size=int(env.get("SLURM_STEP_TASKS_PER_NODE", "1").split("(")[0]),
                        launcher="slurm")
    return DistInfo()


def pick_device(pref: str, local_rank: int) -> torch.device:
    if pref in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if pref == "cuda":
        raise RuntimeError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
    if pref in ("auto", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    if pref == "mps":
        raise RuntimeError("device=mps but MPS is not available; use device=cpu or device=auto")
    return torch.device("cpu")


def init(device: str = "auto", timeout_s: int = 600) -> DistInfo:
    info = detect()
    info.device = pick_device(device, info.local_rank)
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    if info.world_size == 1:
        return info
    if info.launcher == "slurm":
        os.environ.setdefault("MASTER_ADDR", _first_slurm_host(os.environ["SLURM_STEP_NODELIST"]))
        # A port derived from the job id: two jobs sharing a node do not collide.
        os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))
    info.backend = "nccl" if info.device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(info.backend, init_method="env://", rank=info.rank,
                                world_size=info.world_size, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=info.device if info.device.type == "cuda" else None)
    return info


def teardown() -> None:
    """Barrier, then destroy: no rank tears down while another still talks to it."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t)
    return t


def broadcast_object(obj, src: int = 0):
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
