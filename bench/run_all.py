"""Run the CPU benchmarks (and the GPU one where a GPU is visible), print the table, write JSON.

    python -m bench                      # CPU benchmarks, about 10-12 minutes on 2 cores
    python -m bench --smoke              # every benchmark at tiny sizes (< 1 min): checks they run
    python -m bench --json bench.json    # also write every report as JSON
    python -m bench --only loop_overhead,grad_comm
    python -m bench --gpu                # also bench/gpu.py (needs CUDA; else "not measured")

Ratios are measured in this run; targets are checked and shown, never asserted: the exit
status is 0 whether or not a target is met, and 1 only if a benchmark fails to run or its
output is malformed.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback

try:
    from bench import harness as H
except ImportError:
    import harness as H

CPU = ["loop_overhead", "loader_headroom", "loader_cost", "jpeg_cost", "ddp_efficiency", "grad_comm"]
ROW_KEYS = {"name", "ratio", "target", "met", "status", "details"}
GPU_COMMAND = "python bench/gpu.py --out gpu_results.json"


def check(rep: dict) -> list[str]:
    """Problems with a report's shape (not with its numbers)."""
    problems = []
    if not {"benchmark", "rows", "settings", "seconds"} <= set(rep):
        return [f"report keys {sorted(rep)}"]
    if not rep["rows"]:
        problems.append(f"{rep['benchmark']}: no rows")
    for r in rep["rows"]:
        if set(r) != ROW_KEYS:
            problems.append(f"{r.get('name')}: keys {sorted(r)}")
        elif r["status"] == "measured":
            unit = r["details"].get("unit", "ratio")
            if not isinstance(r["ratio"], float) or not math.isfinite(r["ratio"]):
                problems.append(f"{r['name']}: ratio {r['ratio']!r} is not a finite number")
            elif unit not in H.UNITS:
                problems.append(f"{r['name']}: unit {unit!r} is not one of {sorted(H.UNITS)}")
            elif not H.UNITS[unit](r["ratio"]):
                problems.append(f"{r['name']}: {unit} {r['ratio']!r} is out of range for a {unit}")
        elif r["ratio"] is not None or r["met"] is not None:
            problems.append(f"{r['name']}: status {r['status']!r} but ratio/met set")
    return problems


def run_one(name: str, args) -> dict:
    import importlib
    mod = importlib.import_module(f"bench.{name}")
    if name == "gpu":
        argv = ["--smoke"] if args.smoke else []
        gargs = argparse.Namespace(smoke=args.smoke, batch=512 if not args.smoke else 64, warmup=15, timed=100, pairs=3,
                                   peak_tflops=None, budget_s=420, no_compile=False, allow_cpu=False, argv=argv,
                                   decode_batch=256, decode_workers=min(16, len(os.sched_getaffinity(0))))
        return mod.run(gargs)
    return mod.run(argparse.Namespace(smoke=args.smoke, threads=args.threads, only=""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    H.common_args(p)
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(CPU + ['gpu'])}")
    p.add_argument("--gpu", action="store_true", help="also run bench/gpu.py")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else CPU + (["gpu"] if args.gpu or args.smoke else [])
    t0 = time.perf_counter()
    print(f"machine: {H.machine()}\ntorch threads per process: {args.threads}\n", flush=True)
    reports, failed = [], []
    for name in names:
        print(f"-- {name}{' (smoke)' if args.smoke else ''}", flush=True)
        try:
            rep = run_one(name, args)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        H.print_report(rep)
        reports.append(rep)
    if "gpu" not in names:
        reports.append({"benchmark": "gpu", "rows": [H.row("gpu (all rows)", None, "", None, {"command": GPU_COMMAND},
                                                           status="pending GPU run")],
                        "settings": {}, "seconds": 0.0})
    total = time.perf_counter() - t0
    if args.smoke:
        print("\nSMOKE RUN: tiny sizes, so the ratios below say nothing about performance; "
              "it only checks that every benchmark runs and reports well-formed rows.", flush=True)
    print(f"\n{H.table(reports)}\n\nmachine: {H.machine()}; {args.threads} torch thread(s) per process; "
          f"total {total:.0f} s", flush=True)
    problems = [p for rep in reports for p in check(rep)]
    H.write_json(args.json, {"machine": H.machine(), "threads": args.threads, "smoke": args.smoke,
                             "seconds": round(total, 1), "reports": reports, "failed": failed, "problems": problems})
    for problem in problems:
        print(f"malformed: {problem}", file=sys.stderr)
    if failed:
        print(f"failed to run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
