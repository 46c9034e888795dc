"""Shared pieces of the benchmarks: recipe loading, A/B alternation, medians, result rows, the table.

Every benchmark returns a `Report` (a dict): {"benchmark", "rows", "settings", "seconds"}; each row is
{"name", "ratio", "target", "met", "status", "details"}, with `ratio` a positive float or None
when the row could not be measured (then `status` says why and `met` is None).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- recipes

def load_recipe(name: str):
    """Import recipes/<name>.py as a module (recipes are scripts, not a package), once per process.

    The benchmarks' only copy (tests/support/runs.py keeps its own, which loads a fresh module each
    time). Benchmarks use only the recipe's `task`, the contract common.entry.Task (Config, build_data,
    build_models, build_state, train_step, evaluate, exported)."""
    key = f"dtrain_recipe_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, ROOT / "recipes" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[key] = mod
    spec.loader.exec_module(mod)
    return mod


def recipe_config(mod, overrides: list[str]):
    """The config `python recipes/<name>.py key=value ...` would resolve (default YAML + overrides)."""
    from common.cli import parse_cli
    return parse_cli(mod.task.Config, mod.task.script, list(overrides)).cfg


def single_process_env() -> None:
    """Benchmarks that run one process must not inherit a launcher's rank variables."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        os.environ.pop(key, None)


@contextlib.contextmanager
def quiet():
    """Swallow the loop's console lines ([train] step ...) so the benchmark output stays readable."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    except BaseException:
        sys.stdout.write(buf.getvalue()[-4000:])
        raise


def free_port() -> int:
    """A TCP port free on this host now, for a rendezvous (the tests' launchers use it too)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- timing

def alternate(arms: dict[str, Callable[[], float]], pairs: int) -> dict[str, list[float]]:
    """Run each arm's block `pairs` times, alternating the order (A B, B A, A B, ...) so that
    drift in machine load and position effects hit every arm alike. Returns name -> block values."""
    names = list(arms)
    out: dict[str, list[float]] = {n: [] for n in names}
    for i in range(pairs):
        for n in (names if i % 2 == 0 else names[::-1]):
            out[n].append(arms[n]())
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def paired_ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b)]


def spread(xs: list[float]) -> dict:
    return {"median": median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# ----------------------------------------------------------------------------- rows

# What a measured row's number is (details["unit"], default "ratio") and the values that are well formed.
# A difference of two noisy timings can come out negative on a loaded machine: that is a reading, not a bug.
UNITS = {
    "ratio": lambda x: x > 0,        # one positive measurement over another
    "count": lambda x: x >= 0,       # events per step (host syncs): 0 is the goal
    "percent": lambda x: x >= 0,     # a share of wall time; can be 0
    "difference": lambda x: True,    # (a - b) / c of timings: any sign
}


def row(name: str, ratio: float | None, op: str, threshold: float | None, details: dict | None = None,
        status: str = "measured") -> dict:
    """One table row. op is '<=' or '>=' (or '' for an informational row without a target)."""
    if ratio is None or not op:
        met = None
    else:
        met = bool(ratio <= threshold) if op == "<=" else bool(ratio >= threshold)
    target = f"{op} {threshold:g}" if op else "(info)"
    return {"name": name, "ratio": None if ratio is None else float(ratio), "target": target,
            "met": met, "status": status, "details": details or {}}


def report(benchmark: str, rows: list[dict], settings: dict, t0: float) -> dict:
    return {"benchmark": benchmark, "rows": rows, "settings": settings, "seconds": round(time.perf_counter() - t0, 1)}


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()}-core {model}{gpu}; torch {torch.__version__}; Python {platform.python_version()}"


def fmt_ratio(r) -> str:
    return "n/a" if r is None else f"{r:.3f}"


def table(reports: list[dict]) -> str:
    lines = ["| benchmark | measured ratio | target | met? |", "|---|---|---|---|"]
    for rep in reports:
        for r in rep["rows"]:
            met = {True: "yes", False: "NO", None: "-"}[r["met"]]
            shown = fmt_ratio(r["ratio"]) if r["status"] == "measured" else r["status"]
            lines.append(f"| {r['name']} | {shown} | {r['target']} | {met} |")
    return "\n".join(lines)


def print_report(rep: dict) -> None:
    print(f"\n== {rep['benchmark']} ({rep['seconds']} s)", flush=True)
    for r in rep["rows"]:
        met = {True: "met", False: "NOT met", None: ""}[r["met"]]
        shown = fmt_ratio(r["ratio"]) if r["status"] == "measured" else r["status"]
        print(f"  {r['name']:<46} {shown:>10}  target {r['target']:<8} {met}", flush=True)
        for k, v in r["details"].items():
            print(f"      {k}: {_short(v)}", flush=True)


def _short(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list) and v and isinstance(v[0], float):
        return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
    return v


def write_json(path: str | None, payload) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def common_args(parser, default_threads: int = 1) -> None:
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs, times nothing meaningful")
    parser.add_argument("--threads", type=int, default=default_threads,
                        help="torch intra-op threads per process (default %(default)s: stable on a shared 2-core machine)")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this path")


def cli_main(doc: str, run: Callable[[argparse.Namespace], dict], argv=None, add_args=None) -> dict:
    """A CPU benchmark's command line: parse the common flags (and add_args'), run, print the table, write --json."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    common_args(p)
    if add_args:
        add_args(p)
    args = p.parse_args(argv)
    rep = run(args)
    print_report(rep)
    write_json(args.json, rep)
    return rep
