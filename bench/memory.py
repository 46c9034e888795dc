"""Memory per rank and step time of the sharding engines: ddp, deepspeed ZeRO-3 and fsdp, 2 CPU processes.

    python bench/memory.py                 # ResNet-18 and VGG-16 (CIFAR shapes), 6 runs of 2 processes, ~5 min on 2 cores
    python bench/memory.py --smoke         # thin models, 2 steps: checks the script, not the numbers
    python bench/memory.py --json out.json

Each (model, engine) pair is one `torchrun --nproc_per_node 2` of this file in worker mode. A worker
enters the recipe's runtime exactly as a run does (common.train.runtime.runtime: the engine, gloo), builds the
recipe's state (model, SGD + momentum, the engine's wrappers) and takes optimizer steps with the
recipe's train_step on synthetic data. It reports, per rank:
  state MB   bytes of every tensor storage alive in the process after the steps (params, optimizer
             state, engine buffers; a DTensor counts its local shard), minus those alive before the
             state was built (the dataset): what the engine keeps per rank between steps
  peak RSS   the process's peak resident memory (ru_maxrss): adds activations, the libraries
             (DeepSpeed's import is ~200 MB) and allocator slack, so it moves less than state MB
  step s     median seconds per optimizer step after one warm-up step (rank 0)
Ratios: state MB of each engine / ddp's, and step time fsdp / ddp. CPU numbers only; the GPU
rows in bench/README.md are not measured.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = {  # name -> (recipe, overrides)
    "ResNet-18": ("resnet_cifar", ["model.arch=resnet18", "model.width_mult=1"]),
    "VGG-16": ("vgg_cifar", ["model.depth=16", "model.width_mult=1"]),
}
SMOKE = {"ResNet-18": ["model.width_mult=0.25"], "VGG-16": ["model.width_mult=0.125"]}
ENGINES = {"ddp": [], "deepspeed ZeRO-3": ["engine=deepspeed", "deepspeed_config=launch/deepspeed/zero3.json"],
           "fsdp": ["engine=fsdp"]}


def tensor_bytes() -> int:
    """Bytes of the distinct storages of every tensor the garbage collector can see."""
    seen = {}
    for o in gc.get_objects():
        if not isinstance(o, torch.Tensor):
            continue
        t = getattr(o, "_local_tensor", o)  # a DTensor holds its shard in _local_tensor
        try:
            s = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            continue
        if s.device.type != "meta":
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def worker(recipe: str, steps: int, argv: list[str]) -> None:
    from bench.harness import load_recipe
    from common import dist
    from common.cli import parse_cli
    from common.train.runtime import runtime

    task = load_recipe(recipe).task
    cli = parse_cli(task.Config, task.script, argv)
    with runtime(cli.cfg) as rt:
        loaders = task.build_data(cli.cfg, rt)
        gc.collect()
        before = tensor_bytes()
        state = task.build_state(cli.cfg, rt, loaders)
        loaders.train.set_epoch(0, 0)
        batches, times = iter(loaders.train), []
        for _ in range(steps + 1):
            micro = next(batches)
            t = time.perf_counter()
            for i, b in enumerate(micro):
                with rt.micro_step(i, len(micro)):
                    task.train_step(cli.cfg, b, state, rt)
            rt.end_step()
            times.append(time.perf_counter() - t)
        gc.collect()
        mine = {"state_mb": (tensor_bytes() - before) / 2**20,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "step_s": statistics.median(times[1:])}
        rows = dist.all_gather_object(mine)
        del state
        torch.distributed.barrier()
        if rt.is_main:
            print("memory_worker: " + json.dumps(rows), flush=True)


def measure(model: str, engine: str, steps: int, smoke: bool) -> list[dict]:
    recipe, overrides = MODELS[model]
    with tempfile.TemporaryDirectory() as out:
        args = ["--config", str(ROOT / "recipes" / "configs" / f"{recipe}_debug.yaml"), "device=cpu",
                "train.progress=false", f"out_dir={out}", "train.batch_size=16", "data.synthetic_train=256",
                "data.augment=false", "optim.warmup_steps=0", *overrides, *(SMOKE[model] if smoke else []),
                *ENGINES[engine]]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(29500 + os.getpid() % 1000), __file__, "--worker", recipe, str(steps), *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("memory_worker: ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{model} / {engine} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("memory_worker: "):])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="thin models, 2 steps")
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps per run (after one warm-up)")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        recipe, steps, *rest = a.worker
        return worker(recipe, int(steps), rest)
    steps = 2 if a.smoke else a.steps
    results, started = [], time.perf_counter()
    print("| model | engine | state MB per rank (r0 / r1) | / ddp | peak RSS MB (r0 / r1) | step s | fsdp / ddp step time |")
    print("|---|---|---|---|---|---|---|")
    for model in MODELS:
        ref = None
        for engine in ENGINES:
            rows = measure(model, engine, steps, a.smoke)
            state = [r["state_mb"] for r in rows]
            ref = ref or rows
            ratio = max(state) / max(r["state_mb"] for r in ref)
            step_ratio = rows[0]["step_s"] / ref[0]["step_s"] if engine == "fsdp" else None
            results.append({"model": model, "engine": engine, "ranks": rows, "state_vs_ddp": ratio,
                            "step_time_vs_ddp": step_ratio})
            print(f"| {model} | {engine} | {state[0]:.1f} / {state[1]:.1f} | {ratio:.2f} | "
                  f"{rows[0]['peak_rss_mb']:.0f} / {rows[1]['peak_rss_mb']:.0f} | {rows[0]['step_s']:.3f} | "
                  f"{f'{step_ratio:.2f}' if step_ratio else '-'} |", flush=True)
    print(f"({time.perf_counter() - started:.0f} s, {steps} timed steps per run, 2 processes, gloo, CPU)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
