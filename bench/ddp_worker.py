"""Worker processes for the DDP benchmarks (ddp_efficiency.py, grad_comm.py): gloo on CPU.

`launch(world, cases, arms, ...)` starts `world` processes (multiprocessing, spawn) that set the
torchrun variables, enter the recipe's runtime (common.train.runtime.runtime: common/env.py joins the
gloo group; the ddp engine), and per case build two copies of the recipe's model from the same
seed: one wrapped in DDP the way the ddp engine's prepare() does it (gradient_as_bucket_view=True;
explicitly at world size 1), one plain.

The arms are interleaved step by step (A B, B A, ...), each element started together on every
rank by a multiprocessing barrier (which sleeps: a waiting rank does not spin on a core another
rank needs), so load from other processes on a shared machine hits every arm alike:
  ddp        every rank steps its DDP model with the recipe's train_step (gradients all-reduced,
             overlapped with backward)
  local      every rank steps its plain model at the same time, no communication
  ours       every rank steps the recipe's own state from task.build_state (at world size 1: no DDP)
  flat       dist.all_reduce of one fp32 tensor holding as many elements as the model's gradients
  buckets    all-reduces of DDP's own (rebuilt) bucket sizes, issued back to back, then waited
  per_param  one all-reduce per parameter tensor, issued back to back, then waited (no bucketing)
Optionally `alone` blocks: rank 0 steps its plain model while the other ranks sleep.
Each rank writes its per-step seconds to a JSON file before it tears down.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from itertools import cycle
from pathlib import Path

import torch
import torch.multiprocessing as mp

try:
    from bench.harness import free_port
except ImportError:  # run as a script: bench/ is sys.path[0]
    from harness import free_port


def launch(world: int, cases: list[dict], arms: list[str], alone_blocks: int, threads: int, out_dir: Path,
           timeout_s: float = 900) -> list[dict]:
    """Run the cases on `world` processes; returns each rank's results (list indexed by rank)."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(world)
    port = free_port()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # children inherit it before torch starts its pool
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = [ctx.Process(target=worker, args=(rank, world, port, cases, arms, alone_blocks, threads, str(out_dir), barrier))
             for rank in range(world)]
    for p in procs:
        p.start()
    deadline = time.time() + timeout_s
    for p in procs:
        p.join(max(1.0, deadline - time.time()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    files = [out_dir / f"rank{r}.json" for r in range(world)]
    results = [json.loads(f.read_text()) if f.exists() else None for f in files]
    errors = [r.get("error") for r in results if r and r.get("error")]
    codes = [p.exitcode for p in procs]
    if errors or None in results or any(codes):  # workers end through common.entry: 0 unless they failed
        raise RuntimeError(f"DDP benchmark workers failed (exit codes {codes}):\n" + "\n".join(errors or ["no results"]))
    return results


def worker(*args):
    """A spawned rank; it ends like a recipe process (common/entry.py), so gloo cannot abort its exit."""
    from common.entry import exit_after
    exit_after(lambda: _worker(*args))


def _worker(rank, world, port, cases, arms, alone_blocks, threads, out_dir, barrier):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    # Arms train the same model on their own trajectories (dropout draws differ), and subnormal
    # floats, which x86 CPUs compute many times slower, appear on some trajectories and not others
    # (synthetic data): identical arms then differ by ~3%. Flushing them to zero measures the code.
    torch.set_flush_denormal(True)
    out = {"rank": rank, "cases": {}}
    try:
        import torch.distributed as tdist
        from bench import harness as H
        from common.train.runtime import runtime
        if world == 1:
            # The ddp engine never wraps DDP at world size 1; an explicit DDP needs a process group.
            tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
        # Each case's runtime stays up until every case is done: the first one joins the gloo group,
        # the others find it joined; leaving the stack tears it down (barrier, destroy) once.
        with contextlib.ExitStack() as runtimes:
            for case in cases:
                mod = H.load_recipe(case["recipe"])
                cfg = H.recipe_config(mod, case["overrides"])
                with H.quiet():
                    rt = runtimes.enter_context(runtime(cfg))
                loaders = mod.task.build_data(cfg, rt)
                out["cases"][case["name"]] = run_case(mod, cfg, rt, loaders, case, arms, alone_blocks, barrier)
            Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    except BaseException:
        out["error"] = f"rank {rank}: {traceback.format_exc()}"
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
        raise


def run_case(mod, cfg, rt, loaders, case, arms, alone_blocks, barrier) -> dict:
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from common.train.state import TrainState
    from common.train.optim import build_optimizer

    ddp_state = mod.task.build_state(cfg, rt, loaders)  # the ddp engine's prepare(): DDP when world > 1
    # "ours": the recipe's own state at this world size (at world size 1 the ddp engine adds no DDP)
    ours_state = mod.task.build_state(cfg, rt, loaders) if "ours" in arms else None
    if rt.world_size == 1:  # as the ddp engine's prepare() would at world > 1
        ddp_state.models["net"] = DDP(ddp_state.models["net"], gradient_as_bucket_view=True)
    rt.seed()
    plain = mod.task.build_models(cfg, loaders)["net"]
    plain = plain.to(rt.device, memory_format=rt.memory_format)
    plain_opt = build_optimizer(cfg.optim, plain)
    for mine, ref in zip(plain_opt.param_groups, ddp_state.optims["net"].param_groups, strict=True):
        mine["lr"] = ref["lr"]  # build_state's scheduler starts at the warmup LR: every arm on one trajectory
    plain_state = TrainState(models={"net": plain}, optims={"net": plain_opt})
    loaders.train.set_epoch(0, 0)
    batches = [micro[0] for _, micro in zip(range(4), loaders.train)]
    feed = {"ddp": cycle(batches), "local": cycle(batches), "ddp_builtin": cycle(batches), "ours": cycle(batches)}
    builtin_state = mod.task.build_state(cfg, rt, loaders) if "ddp_builtin" in arms else None
    intervals: list[tuple[float, float]] = []
    if case.get("comm_hook"):
        register_timing_hook(ddp_state.models["net"], rt.world_size, intervals)
    # DDP rebuilds its buckets (in gradient-ready order) after the first backward and logs
    # the rebuilt sizes a step later: three DDP steps before reading them.
    for i in range(3):
        mod.task.train_step(cfg, batches[i], ddp_state, rt)
    logged = ddp_state.models["net"]._get_ddp_logging_data()
    sizes = str(logged.get("rebuilt_bucket_sizes") or logged.get("bucket_sizes", ""))
    bucket_bytes = [int(b) for b in sizes.split(",") if b.strip()]
    params = [p for p in plain.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in params)
    bufs = {"flat": [torch.zeros(numel)], "buckets": [torch.zeros(b // 4) for b in bucket_bytes] or [torch.zeros(numel)],
            "per_param": [torch.zeros(p.numel()) for p in params]}

    def collectives(name):
        for w in [tdist.all_reduce(b, async_op=True) for b in bufs[name]]:
            w.wait()

    def element(name):
        if name == "ddp":
            intervals.clear()
            mod.task.train_step(cfg, next(feed["ddp"]), ddp_state, rt)
        elif name == "ddp_builtin":  # DDP's own C++ all-reduce hook, no timing hook (grad_comm compares the two)
            mod.task.train_step(cfg, next(feed["ddp_builtin"]), builtin_state, rt)
        elif name == "local":
            mod.task.train_step(cfg, next(feed["local"]), plain_state, rt)
        elif name == "ours":
            mod.task.train_step(cfg, next(feed["ours"]), ours_state, rt)
        else:
            collectives(name)

    def alone(steps):
        barrier.wait()
        t0 = time.perf_counter()
        if rt.rank == 0:
            for _ in range(steps):
                mod.task.train_step(cfg, next(feed["local"]), plain_state, rt)
        dt = (time.perf_counter() - t0) / steps
        barrier.wait()
        return dt

    alone_times = []
    if alone_blocks:
        alone(1)  # warm-up
        alone_times.append(alone(max(1, case["steps"] // alone_blocks)))
    times: dict[str, list[float]] = {a: [] for a in arms}
    comm: list[list[tuple]] = []  # per step: (bucket index, launch, completion) on this rank
    for k in range(case["warmup"] + case["steps"]):
        for name in (arms if k % 2 == 0 else arms[::-1]):
            barrier.wait()
            t0 = time.perf_counter()
            element(name)
            dt = time.perf_counter() - t0
            if k >= case["warmup"]:
                times[name].append(dt)
                if name == "ddp" and case.get("comm_hook"):
                    comm.append(sorted(intervals))
    for _ in range(alone_blocks - 1):
        alone_times.append(alone(max(1, case["steps"] // alone_blocks)))
    return {"times": times, "comm": comm, "alone": alone_times if rt.rank == 0 else [], "grad_elements": numel,
            "grad_bytes": numel * 4, "bucket_bytes": bucket_bytes, "n_params": len(params),
            "per_rank_batch": len(batches[0][0]), "steps": case["steps"], "world": rt.world_size}


def register_timing_hook(ddp_model, world: int, intervals: list) -> None:
    """DDP's default all-reduce (average over ranks), timed: each bucket's (launch, completion)."""
    import torch.distributed as tdist

    def hook(state, bucket):
        t0, index = time.perf_counter(), bucket.index()
        fut = tdist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()

        def done(f):
            intervals.append((index, t0, time.perf_counter()))
            return f.value()[0]
        return fut.then(done)

    ddp_model.register_comm_hook(None, hook)


def comm_time(per_rank_steps: list[list[list]]) -> list[float]:
    """Per step: seconds during which at least one bucket was being reduced, a bucket counting from
    the moment the last rank launched it (time.perf_counter is one clock for all processes of a
    machine) to its completion on the slower rank: waiting for a rank still in backward is load
    imbalance, not communication."""
    out = []
    for ranks in zip(*per_rank_steps):
        spans = {}
        for rank_intervals in ranks:
            for index, t0, t1 in rank_intervals:
                a, b = spans.get(index, (t0, t1))
                spans[index] = (max(a, t0), max(b, t1))
        total, end = 0.0, float("-inf")
        for a, b in sorted(spans.values()):
            if a > end:
                total += b - a
            elif b > end:
                total += b - end
            end = max(end, b)
        out.append(total)
    return out
