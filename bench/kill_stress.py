"""Random-SIGKILL harness: 2-process torchrun runs SIGKILLed at a random moment, each rerun compared bitwise.

    python bench/kill_stress.py                          # 20 kills, engines ddp and fsdp taking turns
    python bench/kill_stress.py --kills 5 --engines ddp --seed 3

Each engine first trains once uninterrupted (the reference). Then each kill starts the same command
and SIGKILLs the torchrun agent or one worker at a moment drawn uniformly in the reference's
start-up (imports, rendezvous, data loading: before its first logged step) or, as often, right
after a random training step is logged. An orphaned worker must end by itself: at once in start-up, at the next agreed step
boundary with a checkpoint in training. Every process of the run must be gone within --bound-s
seconds; then the same command runs again to the end and its final weights must equal the
reference's bitwise. A kill is good only if both hold; a moment after the run had ended is drawn
again. This process adopts the orphans (a child subreaper) to wait for them and read their
exit codes. A correctness check, not a timing: the machine's speed changes only where kills land.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import free_port  # noqa: E402
from common.engines.fsdp import read_full_weights  # noqa: E402
from common.formats.checkpoint import load_file  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36
# 40 steps of 48 samples, a checkpoint every 5: kills land before, between and after checkpoints;
# a log line every step tells a kill in training from one in start-up.
STEPS = 40
TRAIN = (f"train.max_steps={STEPS}", "train.batch_size=48", "data.synthetic_train=768", "train.ckpt_every_steps=5",
         "train.log_every_steps=1", "train.eval_every_steps=20", "ckpt.keep_last=3")


def command(engine: str, out_dir: Path) -> tuple[list[str], dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "recipes" / "mnist_mlp.py"), "--config", str(ROOT / "recipes" / "configs" / "mnist_mlp_debug.yaml"),
           "device=cpu", "train.progress=false", f"engine={engine}", f"out_dir={out_dir}", *TRAIN]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                        "TORCHELASTIC_RUN_ID")}
    # One thread per process: runs compared bitwise must use the same reduction order.
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return cmd, env


def final_weights(engine: str, out_dir: Path) -> dict[str, torch.Tensor]:
    step = max(int(p.name[5:]) for p in (out_dir / "checkpoints").glob("step_*"))
    where = out_dir / "checkpoints" / f"step_{step:08d}"
    return read_full_weights(where)["net"] if engine == "fsdp" else load_file(where)["models"]["net"]


def run_to_end(engine: str, out_dir: Path, log: Path) -> float:
    cmd, env = command(engine, out_dir)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=900).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}: see {log}")
    return time.perf_counter() - t0


def reference(engine: str, out_dir: Path, log: Path) -> tuple[float, float]:
    """An uninterrupted run: (seconds to its first logged step, seconds in all)."""
    cmd, env = command(engine, out_dir)
    t0, first = time.perf_counter(), None
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    while proc.poll() is None:
        if first is None and "[train] step" in log.read_text():
            first = time.perf_counter() - t0
        time.sleep(0.05)
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: see {log}")
    return first, time.perf_counter() - t0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def exit_codes(pids: list[int], bound_s: float) -> dict[int, int | str]:
    """Each process's exit code once it has ended: an adopted one's from waitpid, "ended" for one its
    own parent reaps; "running" (then SIGKILLed) for one still running after bound_s."""
    codes: dict[int, int | str] = {}
    deadline = time.monotonic() + bound_s
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in set(pids) - set(codes):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                if not running(pid):
                    codes[pid] = "ended"
        time.sleep(0.1)
    for pid in set(pids) - set(codes):
        os.kill(pid, signal.SIGKILL)
        codes[pid] = "running"
    return codes


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return ""


def one_kill(engine: str, out_dir: Path, at: float | int, target: str, bound_s: float, log: Path) -> dict | None:
    """Start the run, SIGKILL `target` `at` seconds in (a float) or once step `at` (an int) is logged, wait
    for every process of it to end, rerun it to the end. {"missed": True, ...} if the run had ended first."""
    cmd, env = command(engine, out_dir)
    t0 = time.monotonic()
    with open(log, "a") as f:
        agent = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    below, first_s = [], None
    while agent.poll() is None and not (time.monotonic() - t0 >= at if isinstance(at, float)
                                        else f"[train] step {at} " in log.read_text()):
        below = descendants(agent.pid) or below
        if first_s is None and "[train] step" in log.read_text():
            first_s = time.monotonic() - t0
        time.sleep(0.05)
    at_s = time.monotonic() - t0
    below = descendants(agent.pid) or below
    workers = [p for p in below if "mnist_mlp.py" in cmdline(p)]
    if agent.poll() is not None:
        exit_codes(below, bound_s)
        shutil.rmtree(out_dir)
        return {"missed": True, "first_step_s": first_s}
    victim = agent.pid if target == "agent" or not workers else workers[int(target[-1]) % len(workers)]
    phase = "training" if "[train] step" in log.read_text() else "start-up"
    os.kill(victim, signal.SIGKILL)
    agent.wait()
    codes = exit_codes(below, bound_s)
    rerun_s = run_to_end(engine, out_dir, log)
    return {"engine": engine, "at_s": round(at_s, 1), "phase": phase, "killed": "agent" if victim == agent.pid else "worker",
            "exit_codes": sorted(map(str, codes.values())), "left_running": sum(c == "running" for c in codes.values()),
            "rerun_s": round(rerun_s, 1), "first_step_s": first_s}


def stress(kills: int = 20, engines: tuple[str, ...] = ("ddp", "fsdp"), seed: int = 0, bound_s: float = 120,
           out_root: Path | None = None, verbose: bool = True) -> dict:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    rng = random.Random(seed)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out_root or tmp)
        root.mkdir(parents=True, exist_ok=True)
        ref, times, start_up = {}, {}, {}
        for engine in engines:
            times[engine] = reference(engine, root / f"ref_{engine}", root / f"ref_{engine}.log")
            ref[engine], start_up[engine] = final_weights(engine, root / f"ref_{engine}"), times[engine][0]
            if verbose:
                print(f"reference {engine}: first step at {times[engine][0]:.1f} s, {times[engine][1]:.1f} s in all",
                      flush=True)
        attempts = 0
        while len(results) < kills and attempts < 3 * kills:
            i, attempts = len(results), attempts + 1
            engine = engines[i % len(engines)]
            # Half in start-up, before the first step (the earliest seen so far: start-up gets shorter when the
            # machine's load drops); half in training, right after a step is logged (by the log, not the clock).
            at = rng.uniform(0, start_up[engine]) if rng.random() < 0.5 else rng.randint(1, STEPS - 1)
            target = rng.choice(("agent", "agent", "worker0", "worker1"))
            out = root / f"kill_{attempts}"
            r = one_kill(engine, out, at, target, bound_s, root / f"kill_{attempts}.log")
            if r["first_step_s"] is not None:
                start_up[engine] = min(start_up[engine], r["first_step_s"])
            if r.get("missed"):  # the run had ended before the moment: draw again
                if verbose:
                    print(f"missed: the {engine} run had ended before {at}", flush=True)
                continue
            weights = final_weights(engine, out)
            r["bitwise_equal"] = weights.keys() == ref[engine].keys() and all(
                torch.equal(weights[k], ref[engine][k]) for k in weights)
            r["good"] = r["bitwise_equal"] and r["left_running"] == 0
            results.append(r)
            if verbose:
                print(f"kill {i + 1}/{kills}: {json.dumps(r)}", flush=True)
    return {"kills": len(results), "asked": kills, "engines": list(engines), "seed": seed, "bound_s": bound_s,
            "in_start_up": sum(r["phase"] == "start-up" for r in results),
            "good": sum(r["good"] for r in results), "bitwise_equal": sum(r["bitwise_equal"] for r in results),
            "left_running": sum(r["left_running"] for r in results), "results": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--engines", default="ddp,fsdp", help="comma-separated; kills take turns over them")
    p.add_argument("--seed", type=int, default=0, help="draws the kill moments and targets")
    p.add_argument("--bound-s", type=float, default=120, help="every process of a killed run must be gone within this")
    p.add_argument("--out-root", default="", help="keep the run directories and logs here (default: a temporary directory)")
    p.add_argument("--json", default="", help="also write the summary here")
    args = p.parse_args(argv)
    rep = stress(args.kills, tuple(args.engines.split(",")), args.seed, args.bound_s,
                 Path(args.out_root) if args.out_root else None)
    print(f"{rep['kills']} kills ({', '.join(rep['engines'])}, seed {rep['seed']}, {rep['in_start_up']} in start-up): "
          f"{rep['bitwise_equal']} bitwise equal after the rerun, {rep['left_running']} processes still running "
          f"{rep['bound_s']:.0f} s after a kill", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1))
    return 0 if rep["good"] == rep["kills"] == rep["asked"] else 1


if __name__ == "__main__":
    sys.exit(main())
