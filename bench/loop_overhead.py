"""Loop overhead: our fit() + engine vs a bare hand-written PyTorch loop.

Both arms train the recipe's own model (recipe task.build_models, same seed, same initial weights),
with the same optimizer and LR schedule (common/train/optim.py: SGD foreach + LambdaLR), on the same
batches (the recipe's task.build_data: the in-memory TensorTrainLoader, synthetic data of the dataset's shape),
in the same precision, in the same process:

  ours: with common.train.runtime.runtime(cfg) as rt: recipe task.build_data -> task.build_state ->
        common.train.loop.fit(cfg, state, rt, loaders, task.train_step, task.evaluate, recipe)
        with train.max_steps=N: everything the loop does per step (micro_step, Meter, NonFiniteGuard,
        schedulers, logging every train.log_every_steps, preemption check) is inside the timing.
  bare: for x, y in batches: loss = F.cross_entropy(model(x), y); loss.backward(); opt.step();
        opt.zero_grad(set_to_none=True); sched.step()

The arms alternate step by step (one bare step, then one of ours, ...) inside each fit() run,
so a load spike from other processes on a shared machine hits both alike; each block is one
fit() run from the same initial weights, the block's ratio is (mean ours step) / (mean bare
step) after `warmup` steps, and the reported ratio is the median over blocks. fit()'s end-of-run
evaluation and checkpoint lie outside the timed steps. Every block's two loss curves must be
identical: the max abs difference is printed.

    python bench/loop_overhead.py [--smoke] [--json out.json]
"""
from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    from bench import harness as H
except ImportError:  # run as a script: bench/ is not on sys.path as a package
    import harness as H

from common.train.runtime import runtime
from common.train.loop import fit
from common.train.optim import build_optimizer, build_scheduler

# name: (recipe, overrides, target ratio, (warmup, timed steps per block), blocks)
CASES = {
    "loop_overhead/mnist_mlp_b128": ("mnist_mlp", ["train.batch_size=128"], 1.05, (5, 100), 5),
    "loop_overhead/resnet18_b32": ("resnet_cifar", ["model.arch=resnet18", "train.batch_size=32"], 1.02, (1, 8), 3),
}
# Informational: a model so small that the step is almost all host overhead, giving the loop's
# fixed cost per step in microseconds (what matters on a GPU, where the host must run ahead).
TINY = ("mnist_mlp", ["train.batch_size=32", "model.hidden=[32]"], (20, 400), 3)
SMOKE = {
    "loop_overhead/mnist_mlp_b128": ("mnist_mlp", ["train.batch_size=16", "model.hidden=[64]"], 1.05, (1, 4), 1),
    "loop_overhead/resnet18_b32": ("resnet_cifar", ["model.arch=resnet18", "model.width_mult=0.0625",
                                                    "train.batch_size=4"], 1.02, (1, 2), 1),
}
TINY_SMOKE = ("mnist_mlp", ["train.batch_size=8", "model.hidden=[8]"], (1, 4), 1)
SHAPES = {"mnist_mlp": [1, 28, 28], "resnet_cifar": [3, 32, 32]}


def case_overrides(recipe: str, extra: list[str], steps: int, batch: int, out_dir: Path, device: str,
                   precision: str) -> list[str]:
    c, h, w = SHAPES[recipe]
    return [
        f"device={device}", f"precision={precision}", "data.name=synthetic", f"data.synthetic_shape=[{c},{h},{w}]",
        # One epoch longer than the run: no epoch-end evaluation or checkpoint inside the timed window.
        f"data.synthetic_train={batch * (steps + 1)}", "data.synthetic_test=256",
        f"train.max_steps={steps}", "train.progress=false", "resume=none", f"out_dir={out_dir}", *extra]


def bare_setup(mod, cfg, rt, loaders, steps: int):
    """What a hand-written script builds: the same model (same seed), optimizer and schedule."""
    torch.manual_seed(cfg.seed)
    model = mod.task.build_models(cfg, loaders)[mod.task.exported]
    model = model.to(rt.device, memory_format=rt.memory_format)
    opt = build_optimizer(cfg.optim, model)
    return model, opt, build_scheduler(cfg.optim, opt, steps)


def epochs(loader):
    """Batches from a training loader epoch after epoch, as fit() draws them (copy the loader first)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch, 0)
        yield from loader
        epoch += 1


def bare_loop(model, opt, sched, cfg, rt, loaders, steps: int, losses: list):
    """The hand-written loop, as a generator that yields after each step (next() = one batch + one step)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    loader = copy.copy(loaders.train)  # same tensors, its own epoch cursor
    model.train()
    for _, micro in zip(range(steps), epochs(loader)):
        x, y = micro[0]
        with torch.autocast(rt.device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(loss.detach())
        yield


def interleaved_block(recipe: str, mod, cfg, rt, loaders, warmup: int, steps: int, out_dir: Path,
                      bare_after: bool) -> dict:
    """One fit() run of `steps` steps with one bare-loop step run just before each of ours.

    Interleaving step by step puts both arms in the same moments of a shared, noisy machine.
    Each arm keeps its own global RNG stream (dropout), swapped in and out around the bare step,
    so both loss curves are those of an undisturbed run. Ours' step time is the interval
    between consecutive train_step calls minus the bare step and the swaps inside it.
    """
    cfg.out_dir = str(out_dir)
    state = mod.task.build_state(cfg, rt, loaders)
    ours_losses, bare_losses = [], []
    gen = bare_loop(*bare_setup(mod, cfg, rt, loaders, steps), cfg, rt, loaders, steps, bare_losses)
    torch.manual_seed(cfg.seed + 1)  # the same dropout stream in both arms
    rng = {"ours": None, "bare": torch.get_rng_state()}
    entries, inner, bare_t = [], [], []

    def bare_step():
        t0 = time.perf_counter()
        rng["ours"] = torch.get_rng_state()
        torch.set_rng_state(rng["bare"])
        b0 = time.perf_counter()
        next(gen)
        b1 = time.perf_counter()
        rng["bare"] = torch.get_rng_state()
        torch.set_rng_state(rng["ours"])
        bare_t.append(b1 - b0)
        inner.append(time.perf_counter() - t0)

    def timed_step(cfg, batch, state, rt):
        entries.append(time.perf_counter())
        if not bare_after:
            bare_step()
        out = mod.task.train_step(cfg, batch, state, rt)
        ours_losses.append(out["loss"])
        if bare_after:
            bare_step()
        return out

    with H.quiet():
        fit(cfg, state, rt, loaders, timed_step, mod.task.evaluate, recipe)
    shutil.rmtree(out_dir, ignore_errors=True)
    assert len(entries) == steps, (len(entries), steps)
    ours_t = [entries[k + 1] - entries[k] - inner[k] for k in range(steps - 1)]
    window = slice(warmup, steps - 1)
    return {"ours": sum(ours_t[window]) / len(ours_t[window]), "bare": sum(bare_t[window]) / len(bare_t[window]),
            "ours_losses": torch.stack(ours_losses).float().cpu(), "bare_losses": torch.stack(bare_losses).float().cpu()}


def measure(recipe: str, extra: list[str], warmup: int, timed: int, blocks: int, tmp: Path,
            device: str = "cpu", precision: str = "fp32") -> dict:
    """`blocks` fit() runs, each interleaved step by step with the bare loop; per-block ratios, median."""
    H.single_process_env()
    mod = H.load_recipe(recipe)
    steps = warmup + timed + 1
    batch = int(next(o.split("=")[1] for o in extra if o.startswith("train.batch_size=")))
    cfg = H.recipe_config(mod, case_overrides(recipe, extra, steps, batch, tmp, device, precision))
    with runtime(cfg) as rt:
        loaders = mod.task.build_data(cfg, rt)
        results = [interleaved_block(recipe, mod, cfg, rt, loaders, warmup, steps, tmp / f"block_{i}",
                                     bare_after=i % 2 == 1) for i in range(blocks)]
    ref = results[0]["bare_losses"]
    ours_t, bare_t = [r["ours"] for r in results], [r["bare"] for r in results]
    ratios = H.paired_ratios(ours_t, bare_t)
    return {"ours_s_per_step": ours_t, "bare_s_per_step": bare_t, "paired_ratios": ratios,
            "ratio_of_medians": H.median(ours_t) / H.median(bare_t), "median_paired_ratio": H.median(ratios),
            "loss_max_abs_diff_ours_vs_bare": max(float((r["ours_losses"] - r["bare_losses"]).abs().max()) for r in results),
            "loss_max_abs_diff_any_block": max(float((c - ref).abs().max()) for r in results
                                               for c in (r["ours_losses"], r["bare_losses"])),
            "loss_first_last": [float(ref[0]), float(ref[-1])], "steps_per_block": steps, "warmup": warmup,
            "blocks": blocks, "batch": batch}


def run(args) -> dict:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    cases, tiny = (SMOKE, TINY_SMOKE) if args.smoke else (CASES, TINY)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as tmp:
        for name, (recipe, extra, target, (warmup, timed), blocks) in cases.items():
            m = measure(recipe, extra, warmup, timed, blocks, Path(tmp))
            details = {
                "ours_ms_per_step": 1e3 * H.median(m["ours_s_per_step"]),
                "bare_ms_per_step": 1e3 * H.median(m["bare_s_per_step"]),
                "paired_ratios": m["paired_ratios"],
                "ratio_of_medians": m["ratio_of_medians"],
                "loss_max_abs_diff_ours_vs_bare": m["loss_max_abs_diff_ours_vs_bare"],
                "loss_max_abs_diff_any_two_blocks": m["loss_max_abs_diff_any_block"],
                "loss_first_last": m["loss_first_last"],
                "setup": f"{recipe} {' '.join(extra)}, fp32, CPU, {m['blocks']} blocks x "
                         f"{m['steps_per_block'] - m['warmup'] - 1} timed steps, interleaved step by step",
            }
            rows.append(H.row(name, m["median_paired_ratio"], "<=", target, details))
        recipe, extra, (warmup, timed), blocks = tiny
        m = measure(recipe, extra, warmup, timed, blocks, Path(tmp))
        added_us = 1e6 * (H.median(m["ours_s_per_step"]) - H.median(m["bare_s_per_step"]))
        rows.append(H.row("loop_overhead/tiny_mlp_b32 (host-bound, info)", m["median_paired_ratio"], "", None, {
            "ours_us_per_step": 1e6 * H.median(m["ours_s_per_step"]),
            "bare_us_per_step": 1e6 * H.median(m["bare_s_per_step"]),
            "added_us_per_step": added_us,
            "loss_max_abs_diff_ours_vs_bare": m["loss_max_abs_diff_ours_vs_bare"],
            "setup": f"{recipe} {' '.join(extra)}: the step is almost all host time, so the difference is "
                     "the loop's fixed cost per step"}))
    return H.report("loop_overhead", rows, {"threads": args.threads, "device": "cpu", "precision": "fp32",
                                            "smoke": args.smoke}, t0)


def main(argv=None):
    return H.cli_main(__doc__, run, argv)


if __name__ == "__main__":
    main()
