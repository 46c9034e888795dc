"""Warnings that save GPU-days: settings that make a run do less than it looks like it will.

`warnings()` runs once at the start, after the loaders exist (common/entry.py prints its lines on
rank 0), and in `--dry-run` with what is known without data: there the length of a run is only
known from train.max_steps, and the training set's size not at all. A setting that cannot work is
an error instead (ConfigError: the key and the fix).
"""
from __future__ import annotations

from common.config import ConfigError


def warnings(cfg, total: int | None, n_train: int | None = None) -> list[str]:
    """Lines to print as `warning: ...`. total: the run's optimizer steps (None = not known yet);
    n_train: training samples (None = not known yet)."""
    t, o, out = cfg.train, cfg.optim, []
    if t.ema_decay > 0 and t.ema_warmup == "restart" and o.warmup_steps == 0:
        raise ConfigError("train.ema_warmup=restart restarts the EMA through the LR warm-up, and optim.warmup_steps=0 "
                          "has none: set optim.warmup_steps, or train.ema_warmup=none")
    if total is not None and o.warmup_steps >= total:
        if o.schedule == "onecycle" and o.warmup_steps > total:
            raise ConfigError(f"optim.warmup_steps={o.warmup_steps} is longer than the run ({total} steps) and "
                              f"optim.schedule=onecycle cannot warm up past its end: set optim.warmup_steps below "
                              f"{total} (0 = onecycle's default 30%)")
        out.append(f"optim.warmup_steps={o.warmup_steps} >= the run's {total} steps: the LR is still warming up "
                   f"when training stops and never reaches optim.lr={o.lr}; set optim.warmup_steps below {total} "
                   "(e.g. 0)")
    if total is not None:
        for key, what in (("eval_every_steps", "evaluation"), ("ckpt_every_steps", "checkpoint")):
            every = getattr(t, key)
            if every > total:
                out.append(f"train.{key}={every} is more than the run's {total} steps: it never fires, only the "
                           f"final {what} at step {total} happens; set train.{key} <= {total} (0 = each epoch end)")
    if n_train is not None and not cfg.data.drop_last and t.batch_size > n_train:
        out.append(f"train.batch_size={t.batch_size} is larger than the training set ({n_train} samples): with "
                   f"data.drop_last=false every step is the whole set, padded with repeats to equal shards; "
                   f"set train.batch_size <= {n_train}")
    return out
