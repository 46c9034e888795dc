"""Process-group setup that works unchanged under python, torchrun and srun.

Where the ranks come from, in order:
  torchrun / accelerate / deepspeed launchers: RANK, WORLD_SIZE, LOCAL_RANK (env://)
  mpirun (accelerate's CPU launcher):          OMPI_COMM_WORLD_* or PMI_* (MPICH, Intel MPI)
  srun one task per GPU, no torchrun:          SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID
  anything else (plain `python`):              a single process, no process group
Ranks found any other way than RANK/WORLD_SIZE are exported as RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT, so Accelerate and DeepSpeed see the same layout.
"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from common.config import UserError
from common.hosts import host_facts, loopback_warning
from common.launcher import launcher_of


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = "none"  # none | torchrun | accelerate | deepspeed | mpi | slurm | env
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


_MPI = (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
        ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"))


def detect(env=os.environ) -> DistInfo:
    """Rank layout from the environment, without touching any process group."""
    launcher = launcher_of(env)
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                        local_rank=int(env.get("LOCAL_RANK", 0)),
                        local_world_size=int(env.get("LOCAL_WORLD_SIZE", env.get("LOCAL_SIZE", env["WORLD_SIZE"]))),
                        launcher=launcher)
    for rank, size, local, local_size in _MPI:
        if rank in env and int(env.get(size, "1")) > 1:
            return DistInfo(rank=int(env[rank]), world_size=int(env[size]), local_rank=int(env.get(local, 0)),
                            local_world_size=int(env.get(local_size, env[size])), launcher="mpi")
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
        os.environ.setdefault("MASTER_PORT", str(slurm_port(int(os.environ.get("SLURM_JOB_ID", "0")))))
    if info.launcher == "mpi":  # single-node mpirun (accelerate's CPU launcher sets these for multi-node)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
    export_env(info)
    info.backend = "nccl" if info.device.type == "cuda" else "gloo"
    # Before any collective: a loopback-bound gloo/NCCL hangs in init_process_group, not after it.
    warning = loopback_warning(host_facts(info))
    if warning:
        print(f"dtrain: warning (rank {info.rank}): {warning}", file=sys.stderr, flush=True)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        store, _, _ = next(dist.rendezvous("env://", rank=info.rank, world_size=info.world_size, timeout=timeout))
        # torchrun --max-restarts reuses its store across restarts: without a per-attempt prefix a
        # restarted group can read the dead workers' addresses and fail to connect.
        attempt = join_count(store, info)
        dist.init_process_group(info.backend, store=dist.PrefixStore(f"dtrain/attempt_{attempt}", store),
                                rank=info.rank, world_size=info.world_size, timeout=timeout,
                                device_id=info.device if info.device.type == "cuda" else None)
    return info


def slurm_port(job_id: int) -> int:
    """A rendezvous/master port derived from the SLURM job id (slurm/_lib.sh uses the same formula):
    two jobs sharing a head node do not collide, and 20000-31999 lies below Linux's ephemeral range
    (32768-60999), so no outgoing connection of another program already holds it."""
    return 20000 + job_id % 12000


def join_count(store, info: DistInfo) -> str:
    """Which attempt of this job's process group this is, the same on every rank.

    Not TORCHELASTIC_RESTART_COUNT: that counts the restarts the local agent caused, so after a
    worker on one node fails, that node's workers start attempt 1 while the healthy node's agent,
    restarting for the membership change, starts attempt 0 again, and the two prefixes never meet
    (a hang until dist_timeout_s). Every rank of a restarted group joins once per attempt, so how
    often this rank number has joined a group of this size is the same number on every rank.
    (A rank killed before it reaches this point falls one attempt behind the others.)
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return "0"  # a fresh store per launch: nothing stale to avoid
    return str(store.add(f"dtrain/joins/w{info.world_size}/r{info.rank}", 1) - 1)


def export_env(info: DistInfo) -> None:
    """Publish the layout as torchrun's variables, for libraries that read only those."""
    for key, value in (("RANK", info.rank), ("WORLD_SIZE", info.world_size), ("LOCAL_RANK", info.local_rank),
                       ("LOCAL_WORLD_SIZE", info.local_world_size)):
        os.environ.setdefault(key, str(value))


def layout_facts(info: DistInfo, env=os.environ) -> dict:
    """What one rank knows about where it runs; gathered from every rank by check_layout."""
    return {"rank": info.rank, "world_size": info.world_size, "local_rank": info.local_rank,
            "local_world_size": info.local_world_size, "host": os.uname().nodename, "device": str(info.device),
            "gpus": torch.cuda.device_count() if info.device.type == "cuda" else 0, "launcher": info.launcher,
            # The physical GPU: with per-task GPU binding every rank's device is cuda:0.
            "gpu_uuid": str(torch.cuda.get_device_properties(info.device).uuid) if info.device.type == "cuda" else "",
            "slurm_tasks_per_node": env.get("SLURM_STEP_TASKS_PER_NODE", "") if "SLURM_STEP_ID" in env else "",
            "slurm_nodes": int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "0"))),
            "slurm_job_tasks": int(env.get("SLURM_NTASKS", "0")),
            "loopback_warning": loopback_warning(host_facts(info, env))}


def check_layout(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(errors, notes) about the whole job's layout, from every rank's layout_facts.

    Errors are layouts that would train wrongly or hang (ranks missing or doubled, two
    processes on one GPU, torchrun started by several srun tasks on one node); notes are
    layouts that work but waste hardware.
    """
    errors, notes = [], []
    world = rows[0]["world_size"]
    ranks = sorted(r["rank"] for r in rows)
    if ranks != list(range(world)) or any(r["world_size"] != world for r in rows):
        errors.append(f"ranks {ranks} do not form 0..{world - 1}: two launchers nested, or WORLD_SIZE is stale")
    hosts: dict[str, list[dict]] = {}
    for r in rows:
        hosts.setdefault(r["host"], []).append(r)
    for host, rs in sorted(hosts.items()):
        local = sorted(r["local_rank"] for r in rs)
        expected = rs[0]["local_world_size"]
        if local != list(range(len(rs))) or len(rs) != expected:
            errors.append(f"host {host} runs {len(rs)} processes with local ranks {local}, but LOCAL_WORLD_SIZE is "
                          f"{expected}: each node must run local ranks 0..n-1 exactly once")
        devices = [r["gpu_uuid"] for r in rs if r["gpu_uuid"]]
        if len(set(devices)) < len(devices):
            errors.append(f"host {host}: {len(devices)} processes share {len(set(devices))} GPU(s); run one process "
                          "per GPU (--nproc_per_node / --ntasks-per-node = GPUs per node)")
        gpus = max(r["gpus"] for r in rs)
        if devices and len(rs) < gpus:
            notes.append(f"host {host}: {gpus} GPUs visible, {len(rs)} used; --nproc_per_node={gpus} would use all")
        tasks = rs[0]["slurm_tasks_per_node"].split("(")[0]
        if rs[0]["launcher"] != "slurm" and tasks and int(tasks) > 1 and len(rs) > 1:
            errors.append(f"host {host}: srun started {tasks} tasks on this node and each started its own launcher "
                          f"({rs[0]['launcher']}); with torchrun/accelerate/deepspeed use srun --ntasks-per-node=1, "
                          "or drop the launcher and let srun start one task per GPU")
    for host, rs in sorted(hosts.items()):
        if len(hosts) > 1 and rs[0].get("loopback_warning"):
            notes.append(f"host {host}: {rs[0]['loopback_warning']}")
    nodes = rows[0]["slurm_nodes"]
    if nodes and len(hosts) < nodes:
        notes.append(f"the SLURM job has {nodes} nodes but processes run on {len(hosts)}: {sorted(hosts)}")
    return errors, notes


def teardown(barrier: bool = True) -> None:
    """Barrier, then destroy: no rank tears down while another still talks to it.

    barrier=False when this rank failed: the others may be gone, and a barrier would hang.
    Idempotent. The gloo threads end only when the last reference to the group does, which
    may be a DDP module or a library's state; common/entry.py makes the process exit safe anyway.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            if barrier:
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


def on_main(work):
    """Collective: rank 0 runs `work()` and every rank returns its result. A UserError it raises is
    raised on every rank instead: the same class, rebuilt from its message, so every rank exits alike.
    Any other exception propagates on rank 0 alone (a bug: its traceback ends the job)."""
    result = error = None
    if rank() == 0:
        try:
            result = work()
        except UserError as e:
            error = (type(e), str(e))
    error, result = broadcast_object((error, result))
    if error is not None:
        kind, words = error
        raise kind(words)
    return result
