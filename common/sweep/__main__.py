"""python -m common.sweep SPEC.yaml [--local N | --slurm [N]] [--dir SWEEP_DIR]

Checks the spec (exit 2 naming the problem, before anything is written), takes SWEEP_DIR/sweep.lock
(a second sweep on the same dir is exit 2), keeps the spec as SWEEP_DIR/spec.yaml (a re-run must give
the same one), runs the study (common/sweep/loop.py) and prints the best trial and a table.
Exit codes: 0 done, 2 bad input, 1 no trial completed, 130/75 stopped by SIGINT/SIGTERM (re-run to resume).
"""
from __future__ import annotations

import argparse
import fcntl
import os
import sys
from pathlib import Path

import yaml

from common.config import UserError
from common.sweep import launchers, spec as specs, study as studies
from common.sweep.loop import Sweep
from common.sweep.summary import summary


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m common.sweep", description="An Optuna study whose trials are dtrain runs "
                                "(docs/sweeps.md).")
    p.add_argument("spec", help="the sweep spec (YAML)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", type=int, metavar="N", help="run N trials at once on this machine (default 1)")
    where.add_argument("--slurm", type=int, nargs="?", const=4, metavar="N",
                       help="each trial an sbatch job, N in the queue at once (default 4; run from the repository root)")
    p.add_argument("--dir", type=Path, help="the sweep directory (default runs/sweep_<spec name>)")
    args = p.parse_args(argv)
    if (args.local or args.slurm or 1) < 1:
        p.error("--local N and --slurm N need N >= 1")
    return args


def lock(sweep_dir: Path) -> None:
    """Hold SWEEP_DIR/sweep.lock for this process's life; another live sweep holding it is a UserError."""
    fd = os.open(sweep_dir / "sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 100, 0).decode(errors="replace").strip() or "another process"
        raise UserError(f"{sweep_dir} is in use by another sweep ({holder}); wait for it, or use another --dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)


def keep_spec(spec: specs.Spec, sweep_dir: Path) -> None:
    """SWEEP_DIR/spec.yaml: the spec as given; a re-run with another spec is refused (its trials would mix)."""
    kept = sweep_dir / "spec.yaml"
    if kept.exists():
        if yaml.safe_load(kept.read_text()) != spec.raw:
            raise UserError(f"{sweep_dir} holds a sweep of another spec ({kept}); re-run with that spec to resume "
                            "it, or use another --dir")
        return
    tmp = sweep_dir / "spec.yaml.tmp"
    tmp.write_text(spec.path.read_text())
    os.replace(tmp, kept)


def main(argv=None) -> int:
    args = parse(argv)
    try:
        spec = specs.load(args.spec)
        studies.check(spec)
        launcher = launchers.Slurm(spec.recipe, spec.slurm, spec.nproc_per_node) if args.slurm is not None else \
            launchers.Local(spec.recipe, spec.nproc_per_node)
        sweep_dir = args.dir or Path("runs") / f"sweep_{Path(args.spec).stem}"
        sweep_dir.mkdir(parents=True, exist_ok=True)
        lock(sweep_dir)
        keep_spec(spec, sweep_dir)
        sweep = Sweep(spec, sweep_dir, launcher, args.local or args.slurm or 1)
        code = sweep.run()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(summary(sweep.study, spec, sweep_dir), flush=True)
    if code == 0 and not any(t.state.name == "COMPLETE" for t in sweep.study.get_trials(deepcopy=False)):
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
