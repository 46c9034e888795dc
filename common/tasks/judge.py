"""eval.classifier=auto: the Fréchet-distance judge, trained once on first use and cached.

The judge is recipes/mnist_cnn.py trained with recipes/configs/mnist_cnn_fd_judge.yaml (real
Fashion-MNIST, about 2 minutes on 2 CPU cores). It lives in $DTRAIN_CACHE/fd_judge-<hash of that YAML> (default
$XDG_CACHE_HOME/dtrain, else ~/.cache/dtrain): shared by every run and checkout of this user, and by
every host that shares the home directory; editing the YAML makes a new one. Rank 0 trains it in a
child process, into a temporary directory renamed into place when done (so a judge there is always
complete; two runs racing both train, the first rename wins); the other ranks wait for it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import dist
from common.config import UserError

ROOT = Path(__file__).resolve().parents[2]
RECIPE, CONFIG = ROOT / "recipes" / "mnist_cnn.py", ROOT / "recipes" / "configs" / "mnist_cnn_fd_judge.yaml"
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def cache_dir(env=os.environ) -> Path:
    base = env.get("DTRAIN_CACHE") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dtrain"
    return Path(base)


def judge_dir(config: Path = CONFIG, env=os.environ) -> Path:
    """Where the judge that `config` trains is cached: its name carries the YAML's hash."""
    return cache_dir(env) / f"fd_judge-{hashlib.sha256(config.read_bytes()).hexdigest()[:12]}"


def train(where: Path, rt, config: Path = CONFIG, extra: tuple[str, ...] = ()) -> None:
    """Train the judge into `where` (a child process: one process, this run's launcher variables left out)."""
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{where.name}.", dir=where.parent))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    rt.log(f"training the Fréchet-distance judge once, into {where} (about 2 minutes on a CPU; "
           "later runs reuse it; eval.classifier=none skips it)")
    try:
        proc = subprocess.run([sys.executable, str(RECIPE), "--config", str(config), f"out_dir={tmp / 'run'}", *extra],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"training the Fréchet-distance judge failed (exit {proc.returncode}):\n"
                            f"{(proc.stdout + proc.stderr)[-2000:].strip()}\n"
                            "Fix the cause above, or set eval.classifier=none to train without val/fd")
        try:
            os.replace(tmp / "run", where)  # atomic: a judge at `where` is always a finished one
        except OSError:
            if not where.is_dir():  # else another run renamed its judge into place first: use that one
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rt.log(f"Fréchet-distance judge ready: {where}")


def auto_judge(rt, config: Path = CONFIG, extra: tuple[str, ...] = ()) -> str:
    """The cached judge's run directory, trained first by rank 0 when missing (every rank calls this)."""
    where = judge_dir(config)
    if not dist.broadcast_object(where.is_dir() if rt.is_main else None):  # rank 0 decides for all
        if not rt.is_main:
            print(f"[rank {rt.rank}] waiting for rank 0 to train the Fréchet-distance judge into {where}", flush=True)
        error = None
        if rt.is_main:
            try:
                train(where, rt, config, extra)
            except (UserError, OSError) as e:  # told to every rank: none may wait for a judge that never comes
                error = str(e)
        error = dist.broadcast_object(error)
        if error:
            raise UserError(error)
    if not where.is_dir():
        raise UserError(f"the Fréchet-distance judge is in {where} on rank 0's host, not on this one: "
                        "set DTRAIN_CACHE to a directory every host shares, or eval.classifier=none")
    return str(where)
