"""Time to accuracy on real Fashion-MNIST: the fast mnist_cnn config against the default one.

    python bench/time_to_accuracy.py                   # 3 runs of the fast config + the default to 91%
    python bench/time_to_accuracy.py --runs 5 --json tta.json
    python bench/time_to_accuracy.py --skip-default    # only the fast config

Fast: `python recipes/mnist_cnn.py --config recipes/configs/mnist_cnn_fast.yaml`, each run a whole
process from start to exit (imports, data loading, training, the one evaluation, the checkpoint), its
wall time and final test accuracy (target: every run >= --target, mean wall <= 60 s on a quiet 2-core
CPU). Default: `python recipes/mnist_cnn.py` (15 epochs, an evaluation per epoch), timed from process
start to the first evaluation line at or above --target, then stopped; the ratio default / fast is
the speed-up in time to the target. Wall times count everything else the machine runs: measure on a
quiet machine (`uptime` load below 0.5) and say so. Not part of `python -m bench` (minutes, not a ratio
of alternated arms). Real Fashion-MNIST must be found (data/ or /usr/share/datasets/fashion-mnist).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAL = re.compile(r"^\[val\] step (\d+) epoch (\d+) .*\bacc1 ([0-9.]+)")


def run(args: list[str], out_dir: Path, stop_at: float | None = None) -> dict:
    """One recipe process; wall time to exit, or to the first val acc1 >= stop_at (then it is stopped)."""
    cmd = [sys.executable, str(ROOT / "recipes" / "mnist_cnn.py"), *args, f"out_dir={out_dir}", "resume=none",
           "train.progress=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    evals, reached, tail = [], None, []
    for line in proc.stdout:
        tail = (tail + [line])[-20:]
        m = VAL.match(line)
        if m:
            evals.append({"step": int(m.group(1)), "epoch": int(m.group(2)), "acc1": float(m.group(3)),
                          "wall_s": time.perf_counter() - t0})
            if stop_at is not None and evals[-1]["acc1"] >= stop_at:
                reached = evals[-1]
                proc.kill()  # our own child; the rest of its schedule is not measured
                break
    code = proc.wait()
    wall = time.perf_counter() - t0
    if reached is None and code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}:\n{''.join(tail)}")
    return {"wall_s": reached["wall_s"] if reached else wall, "acc1": (reached or evals[-1])["acc1"] if evals else None,
            "epoch": (reached or evals[-1])["epoch"] if evals else None, "reached": reached is not None or stop_at is None,
            "evals": evals}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs of the fast config")
    p.add_argument("--target", type=float, default=91.0, help="test accuracy (%%) to reach")
    p.add_argument("--skip-default", action="store_true", help="do not time the default config")
    p.add_argument("--json", help="write the results here")
    p.add_argument("overrides", nargs="*", help="key=value overrides for the fast config")
    a = p.parse_args(argv)
    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f} on {os.cpu_count()} cores" + ("  (NOT quiet: wall times are inflated)"
                                                                            if load > 0.5 else ""), flush=True)
    fast = []
    with tempfile.TemporaryDirectory(prefix="tta_") as tmp:
        for i in range(a.runs):
            r = run(["--config", str(ROOT / "recipes/configs/mnist_cnn_fast.yaml"), *a.overrides], Path(tmp) / f"fast{i}")
            fast.append(r)
            print(f"fast run {i + 1}: {r['wall_s']:.1f} s, test acc1 {r['acc1']:.2f}%", flush=True)
        default = None if a.skip_default else run([], Path(tmp) / "default", stop_at=a.target)
    walls = [r["wall_s"] for r in fast]
    accs = [r["acc1"] for r in fast]
    summary = {"fast_wall_s": {"mean": statistics.mean(walls), "min": min(walls), "max": max(walls)},
               "fast_acc1": {"mean": statistics.mean(accs), "min": min(accs), "max": max(accs)},
               "fast_all_reach_target": all(x >= a.target for x in accs), "target": a.target, "load_before": load}
    print(f"\nfast config, {a.runs} runs: wall mean {statistics.mean(walls):.1f} s (min {min(walls):.1f}, "
          f"max {max(walls):.1f}); test acc1 mean {statistics.mean(accs):.2f}% (min {min(accs):.2f}, max {max(accs):.2f}); "
          f"every run >= {a.target}%: {'yes' if summary['fast_all_reach_target'] else 'NO'}")
    if default is not None:
        summary["default_to_target_s"] = default["wall_s"] if default["reached"] else None
        summary["default_epoch"] = default["epoch"]
        if default["reached"]:
            ratio = default["wall_s"] / statistics.mean(walls)
            summary["ratio_default_over_fast"] = ratio
            print(f"default config: {a.target}% after epoch {default['epoch']} at {default['wall_s']:.1f} s; "
                  f"default / fast = {ratio:.2f}")
        else:
            print(f"default config: never reached {a.target}% (last {default['acc1']}%)")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "fast": fast, "default": default}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
