"""The entry point every recipe goes through, and the one place errors become exit codes.

    python recipes/<name>.py [--config FILE ...] [--dry-run] [key=value ...]
    python recipes/<name>.py --evaluate RUN_DIR_OR_CHECKPOINT | --export RUN_DIR_OR_CHECKPOINT [--to FILE] [--overwrite]

run() is the whole run, in-process (tests call it) and returns the exit code (the table:
docs/reliability.md#exit-codes); exit_after() then ends the process: group destroyed, garbage
collected, atexit handlers run, streams flushed, os._exit(code), so no gloo thread outlives the
interpreter into an abort (why: docs/reliability.md#why-the-process-ends-with-os_exit).
"""
from __future__ import annotations

import atexit
import gc
import os
import sys
import traceback
from typing import Callable, NoReturn

from common import dist, launcher
from common.config import UserError
from common.cli import parse_cli
from common.config import dump_yaml
from common.data.sampling import check_batch
from common.lifecycle import evaluate, export
from common.train import checks
from common.train.report import batch_split
from common.train.loop import fit, total_steps
from common.train.preempt import EXIT_INTERRUPTED
from common.train.runtime import runtime


def dry_run(cli, rt) -> None:
    """The resolved config with each value's source (rank 0), every rank's mapping in rank order,
    batch arithmetic, engine."""
    cfg = cli.cfg
    if rt.is_main:
        print(f"# resolved config for {cli.recipe}; a value without '# from' is the schema default\n"
              f"{dump_yaml(cfg, cli.sources)}", flush=True)
    t, (*notes, verdict) = cfg.train, rt.env.layout()
    rt.log("\n".join([*rt.env.mapping(), f"global batch {batch_split(cfg, rt.world_size)}", *notes,
                      f"engine {cfg.engine}: {rt.describe()}", verdict]))
    if t.max_steps <= 0:
        rt.log(f"run length: train.epochs={t.epochs} epochs (steps per epoch need the data: the warnings about "
               "warmup and cadences come at the start of the real run)")
    for warning in checks.warnings(cfg, t.max_steps if t.max_steps > 0 else None):
        rt.log(f"warning: {warning}")


def run(task, script: str, argv=None):
    """Parse the command line for task.Config, then dry-run, train, or evaluate/export a finished run
    (common/lifecycle/); returns the final metrics."""
    try:
        cli = parse_cli(task.Config, script, argv)
        if cli.action != "train":
            return {"evaluate": evaluate.run, "export": export.run}[cli.action](task, cli)
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
        # One write of the whole line: ranks printing the same error at once must not run into one line.
        sys.stderr.write(f"{prefix}: {e}\n")
        sys.stderr.flush()
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------- ending the process

EXIT_OK, EXIT_ERROR = 0, 1  # EXIT_INTERRUPTED (130), EXIT_PREEMPTED (75): common.train.preempt


def exit_after(main: Callable[[], object]) -> NoReturn:
    """Call main(); end the process with its exit code (see the module docstring). Never returns."""
    code = _call(main)
    os._exit(finish(code))


def _call(main: Callable[[], object]) -> int:
    try:
        main()
        return EXIT_OK
    except SystemExit as e:
        return exit_code(e.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        return EXIT_INTERRUPTED
    except BaseException:  # what the interpreter would print for an uncaught exception
        launcher.exit_if_orphaned()  # e.g. the store connection the dead launcher closed: no traceback
        traceback.print_exc()
        return EXIT_ERROR


def exit_code(code) -> int:
    """SystemExit's code as the interpreter maps it: None -> 0, int -> itself, anything else printed -> 1.
    An int outside 0..255 (which the OS would truncate) -> 1."""
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code if 0 <= code <= 255 else EXIT_ERROR  # os._exit(256) would read as success
    print(code, file=sys.stderr, flush=True)
    return EXIT_ERROR


def finish(code: int) -> int:
    """The orderly part of the exit, while the interpreter is fully alive; returns the code to exit with.

    The runtime has normally destroyed the process group already; if main ended some other way
    it is destroyed here: with a barrier only when this rank finished (another rank that failed
    would never reach the barrier).
    """
    try:
        dist.teardown(barrier=code == EXIT_OK)
    except Exception:
        traceback.print_exc()
        code = code or EXIT_ERROR
    # Objects in reference cycles (models, engines holding a process group) are destroyed now,
    # so their C++ threads are joined while Python can still serve them.
    gc.collect()
    atexit._run_exitfuncs()  # logging.shutdown, multiprocessing (DataLoader workers) finalizers, library hooks
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing more can be said
            pass
    return code
