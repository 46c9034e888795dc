"""What a run says about itself on rank 0: a banner at the start, a summary at the end.

The summary reads out_dir/metrics.jsonl, so it covers the whole run across resumes, and a rerun of
a finished run (nothing left to train) can print it too.
"""
from __future__ import annotations

import math

import torch

from common.config import best_metric
from common.engines.base import unwrap


def count_parameters(models: dict) -> dict[str, int]:
    # ds_numel: a DeepSpeed ZeRO-3 parameter is partitioned and its numel() is that of its local shard.
    return {k: sum(getattr(p, "ds_numel", p.numel()) for p in unwrap(m).parameters()) for k, m in models.items()}


def batch_split(cfg, world: int) -> str:
    t = cfg.train
    return f"{t.batch_size} = world {world} x grad_accum {t.grad_accum} x micro-batch {t.batch_size // (world * t.grad_accum)}"


def device_text(rt) -> str:
    """`cuda:0 NVIDIA H100 80GB HBM3` / `cpu`: rank 0's device, and how many processes share the work."""
    d = rt.device
    name = f"{d} {torch.cuda.get_device_name(d)}" if d.type == "cuda" else str(d)
    return name + (f" (rank 0 of {rt.world_size} processes)" if rt.world_size > 1 else "")


def data_text(cfg, loaders) -> str:
    """The dataset: its name and where it is read from, the images per split, classes and shape."""
    data = cfg.data
    source = "(generated)" if data.name == "synthetic" else f"from {data.root}" if hasattr(data, "root") else ""
    counts = f"{loaders.train.plan.n:,} train"
    if getattr(loaders.eval, "total", None) is not None:
        counts += f", {loaders.eval.total:,} eval"
    c, *size = loaders.shape
    what = f"images {'x'.join(map(str, loaders.shape))}, {loaders.num_classes} classes" if loaders.num_classes else \
        f"(A, B) pairs of {'x'.join(map(str, (c // 2, *size)))}"  # pairs: no classes, A and B stacked as channels
    return f"{data.name} {source}".strip() + f": {counts} {what}"


def banner(cfg, state, rt, recipe: str, total: int, loaders) -> str:
    """loaders: the run's data (its training loader's TrainPlan: common/data/sampling.py)."""
    t, plan = cfg.train, loaders.train.plan
    steps_per_epoch = plan.steps
    params = count_parameters(state.models)
    if t.max_steps > 0:
        length = f"{total} steps (train.max_steps; an epoch is {steps_per_epoch} steps)"
    else:
        length = f"{t.epochs} epochs x {steps_per_epoch} steps = {total} steps"
    if plan.reps > 1:
        length += f"; data.ra_reps={plan.reps}: an epoch shows {plan.distinct:,} distinct samples, each {plan.reps} times"
    return "\n".join([
        f"run {recipe}: " + (f"resumed from step {state.step}" if state.step else "fresh"),
        f"  parameters    {sum(params.values()):,} (" + ", ".join(f"{k} {v:,}" for k, v in params.items()) + ")",
        f"  global batch  {batch_split(cfg, rt.world_size)}",
        f"  length        {length}",
        f"  data          {data_text(cfg, loaders)}",
        f"  device        {device_text(rt)}",
        f"  model         {'compiled (train.compile=true)' if t.compile else 'eager (train.compile=false)'}, "
        f"precision {cfg.precision}",
        f"  out_dir       {cfg.out_dir}",
        f"  engine        {cfg.engine}: {rt.describe()}",
    ])


def final_metrics(rows: list[dict]) -> dict[str, float]:
    """The last evaluation's metrics (what fit returns)."""
    vals = [r for r in rows if r.get("split") == "val"]
    return {k: v for k, v in vals[-1].items() if k not in ("step", "epoch", "split", "wall_time")} if vals else {}


def summary(cfg, ckpt, rows: list[dict], headline: str) -> str:
    split, key = best_metric(cfg) or (None, None)
    seen = [(r[key], r["step"]) for r in rows if r.get("split") == split and isinstance(r.get(key), (int, float))
            and math.isfinite(r[key])]
    lines = [headline]
    if seen:
        value, step = (max if cfg.ckpt.best_mode == "max" else min)(seen, key=lambda vs: (vs[0], -vs[1]))
        lines.append(f"  best          {cfg.ckpt.best_metric} {value:.4g} at step {step}")
    vals = [r for r in rows if r.get("split") == "val"]
    if vals:
        shown = " ".join(f"{k} {v:.4g}" for k, v in final_metrics(rows).items() if isinstance(v, (int, float)))
        lines.append(f"  final val     {shown} (step {vals[-1]['step']})")
    saved = ckpt.all()
    if saved:
        best = ckpt.best_name()
        lines.append(f"  checkpoints   {ckpt.dir} (newest {saved[0].name}" + (f", best {best})" if best else ")"))
    lines.append(f"  TensorBoard   tensorboard --logdir {cfg.out_dir}")
    return "\n".join(lines)
