"""The entry point every recipe goes through, and the one place errors become exit codes.

    python recipes/<name>.py [--config FILE ...] [--dry-run] [key=value ...]

Exit codes: 0 finished (or dry run), 2 a problem the user can fix (the message names it and
the fix; no traceback), 75 preempted after a checkpoint (re-run to continue), anything else
a bug (traceback).
"""
from __future__ import annotations

import contextlib
import sys

from common.config import UserError
from common.cli import dump_yaml, parse_cli
from common.data.sampling import check_batch
from common.engines import make_engine, resolve_engine
from common.env import Env
from common.train import checks
from common.train.loop import fit, total_steps


@contextlib.contextmanager
def runtime(cfg):
    """The process environment and the engine for cfg (cfg.engine is resolved in place, as it
    goes to config.yaml). Torn down on exit: with a barrier when every rank got here cleanly."""
    cfg.engine = resolve_engine(cfg.engine)
    env = Env(cfg)
    clean = False
    try:
        yield make_engine(cfg, env)
        clean = True
    except SystemExit as e:  # an agreed exit (preemption): every rank is here
        clean = e.code in (0, None) or e.code == 75
        raise
    finally:
        env.close(clean)


def dry_run(cli, rt) -> None:
    """The resolved config with each value's source (rank 0), every rank's mapping in rank order,
    batch arithmetic, engine."""
    cfg = cli.cfg
    if rt.is_main:
        print(f"# resolved config for {cli.recipe}; a value without '# from' is the schema default\n"
              f"{dump_yaml(cfg, cli.sources)}", flush=True)
    lines = rt.env.describe()
    t = cfg.train
    rt.log("\n".join([*lines[:rt.world_size],
                      f"global batch {t.batch_size} = world {rt.world_size} x grad_accum {t.grad_accum} "
                      f"x micro-batch {t.batch_size // (rt.world_size * t.grad_accum)}",
                      *lines[rt.world_size:-1], f"engine {cfg.engine}: {rt.describe()}", lines[-1]]))
    if t.max_steps <= 0:
        rt.log(f"run length: train.epochs={t.epochs} epochs (steps per epoch need the data: the warnings about "
               "warmup and cadences come at the start of the real run)")
    for warning in checks.warnings(cfg, t.max_steps if t.max_steps > 0 else None):
        rt.log(f"warning: {warning}")


def run(task, script: str, argv=None):
    """Parse the command line for task.Config, then dry-run or train; returns the final metrics."""
    try:
        cli = parse_cli(task.Config, script, argv)
        with runtime(cli.cfg) as rt:
            check_batch(cli.cfg.train.batch_size, rt.world_size, cli.cfg.train.grad_accum)
            if cli.dry_run:
                return dry_run(cli, rt)
            loaders = task.build_data(cli.cfg, rt)
            for warning in checks.warnings(cli.cfg, total_steps(cli.cfg, loaders.train), loaders.train.plan.n):
                rt.log(f"warning: {warning}")
            state = task.build_state(cli.cfg, rt, loaders)
            return fit(cli.cfg, state, rt, loaders, task.train_step, task.evaluate, cli.recipe)
    except UserError as e:
        prefix = "config error" if isinstance(e, ValueError) else "error"  # ConfigError is a ValueError
        print(f"{prefix}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

