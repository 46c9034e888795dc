"""Exit-code stress: back-to-back 2-process runs under CPU load; every one must exit with its documented code.

    python bench/exit_stress.py                    # 50 runs (finished and dry runs alternate), torchrun
    python bench/exit_stress.py --runs 10 --load 4 --launcher python

A run that trained to the end exits 0 on every rank, and so does a dry run; anything else is
counted: a non-zero launcher exit code, and separately any "terminate called" (a C++ std::thread
or exception escaping at interpreter exit, which is what gloo's threads did before common/entry.py).
CPU load comes from `--load` busy-looping processes (default: one per core), because the exit race
showed up on loaded machines. This is a correctness check, not a timing: the counts do not depend
on how fast the machine is, only on how often a racy exit path gets exercised.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from bench.harness import free_port
except ImportError:  # run as a script: bench/ is sys.path[0]
    from harness import free_port

ROOT = Path(__file__).resolve().parents[1]
ABORT = "terminate called"
# Small and quick: 8 steps, one eval and one checkpoint, so each run exercises the whole exit path.
TRAIN = ("train.max_steps=8", "train.eval_every_steps=8", "train.ckpt_every_steps=8", "train.log_every_steps=4")


@contextlib.contextmanager
def cpu_load(n: int):
    """n busy-looping processes for the duration of the block (ours; ended by pid)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def command(launcher: str, recipe: str, out_dir: Path, dry: bool, nproc: int = 2) -> tuple[list[str], dict]:
    script = [str(ROOT / "recipes" / f"{recipe}.py"), "--config", str(ROOT / "recipes" / "configs" / f"{recipe}_debug.yaml"),
              "device=cpu", "train.progress=false", f"out_dir={out_dir}", *TRAIN] + (["--dry-run"] if dry else [])
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                        "TORCHELASTIC_RUN_ID")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", DS_ACCELERATOR="cpu")
    port = str(free_port())
    if launcher == "torchrun":
        prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", port]
    elif launcher == "deepspeed":
        prefix = ["deepspeed", "--num_gpus", str(nproc), "--master_port", port]
        script += ["engine=deepspeed"]
    elif launcher == "accelerate":
        prefix = ["accelerate", "launch", "--config_file", str(ROOT / "launch/accelerate/cpu_multi_process.yaml"),
                  "--num_processes", str(nproc), "--main_process_port", port]
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    else:
        raise ValueError(launcher)
    return prefix + script, env


def one_run(launcher: str, recipe: str, out_dir: Path, dry: bool, timeout: float = 600) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd, env = command(launcher, recipe, out_dir, dry)
    t0 = time.perf_counter()
    # cwd: the run's own directory, so a core dump (ulimit -c) lands next to the run that made it.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out_dir, timeout=timeout)
    text = proc.stdout + proc.stderr
    return {"kind": "dry" if dry else "train", "rc": proc.returncode, "abort": ABORT in text,
            "seconds": round(time.perf_counter() - t0, 1), "tail": text[-3000:] if proc.returncode or ABORT in text else ""}


def stress(runs: int = 50, load: int | None = None, launcher: str = "torchrun", recipe: str = "mnist_mlp",
           out_root: Path | None = None, kinds: str = "both", verbose: bool = True) -> dict:
    """Finished runs and dry runs (alternating, or only one kind); count the ones that did not exit 0 cleanly."""
    load = (os.cpu_count() or 1) if load is None else load
    results = []
    with tempfile.TemporaryDirectory() as tmp, cpu_load(load):
        root = Path(out_root or tmp)
        for i in range(runs):
            dry = kinds == "dry" or (kinds == "both" and i % 2 == 1)
            r = one_run(launcher, recipe, root / f"run_{i}", dry=dry)
            results.append(r)
            if verbose:
                print(f"run {i + 1}/{runs} {r['kind']}: rc {r['rc']}{' ABORT' if r['abort'] else ''} ({r['seconds']} s)",
                      flush=True)
                if r["tail"]:
                    print(r["tail"], flush=True)
    bad = [r for r in results if r["rc"] != 0 or r["abort"]]
    return {"runs": runs, "launcher": launcher, "recipe": recipe, "load_processes": load,
            "nonzero_exits": sum(r["rc"] != 0 for r in results), "aborts": sum(r["abort"] for r in results),
            "bad_runs": len(bad), "exit_codes": sorted({r["rc"] for r in results}),
            "seconds": round(sum(r["seconds"] for r in results), 1), "failures": bad}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--load", type=int, default=None, help="busy-looping processes (default: one per CPU core)")
    p.add_argument("--launcher", default="torchrun", choices=["torchrun", "deepspeed", "accelerate"])
    p.add_argument("--recipe", default="mnist_mlp")
    p.add_argument("--kinds", default="both", choices=["both", "train", "dry"], help="alternate, or only one kind")
    p.add_argument("--out-root", default="", help="keep the run directories here (default: a temporary directory)")
    p.add_argument("--json", default="", help="also write the summary here")
    args = p.parse_args(argv)
    rep = stress(args.runs, args.load, args.launcher, args.recipe, Path(args.out_root) if args.out_root else None,
                 args.kinds)
    summary = {k: v for k, v in rep.items() if k != "failures"}
    print(json.dumps(summary), flush=True)
    print(f"{rep['runs']} runs ({args.launcher}, {rep['load_processes']} load processes): "
          f"{rep['nonzero_exits']} non-zero exits, {rep['aborts']} aborts", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1))
    return 1 if rep["bad_runs"] else 0


if __name__ == "__main__":
    sys.exit(main())
