"""Run a recipe inside the test process, through common.entry.run, as `python recipes/<name>.py ...` runs it.

For tests that assert on what a run wrote (metrics, weights, files) or printed: no fresh interpreter and
torch import per run. Tests of exit codes from signals, os._exit, launchers or several processes use
support.runs (a real process). A run here sees what a recipe process would: cwd the checkout, sys.argv its
command line, no launcher variables, one intra-op thread (like OMP_NUM_THREADS=1, so results are bitwise
those of support.runs' processes). Everything a run can change in the process is put back afterwards
(environment, cwd, argv, torch's threads, default dtype, deterministic flags and RNGs, Python's and NumPy's
RNGs, signal handlers, logging handlers, warning filters) and what a process's exit would release (its
out_dir locks) is released; warnings go to the run's stderr, as in a process. So tests pass in any order,
alone or in xdist.
"""
from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import random
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.entry import exit_code, run
from common.train import rundir
from support.runs import ROOT, out_dir_of, assert_finished, load_recipe

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class InProcessRun:
    """What subprocess.CompletedProcess gives a test (returncode, stdout, stderr), plus the run's own results."""
    returncode: int
    stdout: str
    stderr: str
    out_dir: Path | None
    result: object = None  # what common.entry.run returned: the final metrics (None for a dry run)


def run_inprocess(recipe: str, *overrides: str, config: str | None = "debug", check: bool = True) -> InProcessRun:
    """`python recipes/<recipe>.py --config recipes/configs/<recipe>_<config>.yaml device=cpu train.progress=false
    *overrides` in this process (config=None: no --config). check: assert exit code 0, showing the output if not.
    An exception other than SystemExit (exit 1 in a real process) propagates, with the run's output attached."""
    args = ["--config", str(ROOT / "recipes" / "configs" / f"{recipe}_{config}.yaml")] if config else []
    args += ["device=cpu", "train.progress=false", *overrides]
    out, err, code, result = io.StringIO(), io.StringIO(), 0, None
    with isolated([str(ROOT / "recipes" / f"{recipe}.py"), *args]):
        try:
            mod = load_recipe(recipe)  # inside: a first import of a library may set environment variables
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                result = run(mod.task, mod.task.script, args)
        except SystemExit as e:
            code = exit_code(e.code)
        except BaseException as e:
            e.add_note(f"--- stdout ---\n{out.getvalue()[-4000:]}\n--- stderr ---\n{err.getvalue()[-4000:]}")
            raise
    proc = InProcessRun(code, out.getvalue(), err.getvalue(), out_dir_of(overrides), result)
    if check:
        assert_finished(proc)
    return proc


def as_a_process() -> None:
    """Warnings as a fresh interpreter shows them: Python's default filters, each printed on (this run's)
    stderr, not recorded by pytest."""
    warnings.resetwarnings()
    for action, category, module in (("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, ""),
                                     ("ignore", PendingDeprecationWarning, ""), ("ignore", ImportWarning, ""),
                                     ("ignore", ResourceWarning, "")):
        warnings.filterwarnings(action, category=category, module=module, append=True)
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
        warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def isolated(argv: list[str]):
    """The process as a fresh recipe process would have it, and as it was afterwards (see the module docstring)."""
    environ, cwd, old_argv = dict(os.environ), os.getcwd(), sys.argv
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    deterministic, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    rngs = torch.get_rng_state(), random.getstate(), np.random.get_state()
    handlers = {s: signal.getsignal(s) for s in SIGNALS}
    locks = set(rundir._held)
    root = logging.getLogger()
    log_handlers, log_level = list(root.handlers), root.level
    for key in LAUNCHER_VARS:
        os.environ.pop(key, None)
    os.chdir(ROOT)
    sys.argv = list(argv)
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            as_a_process()
            yield
    finally:
        for path in set(rundir._held) - locks:  # what the process's exit releases (rundir's atexit handler)
            rundir.unlock(path)
        # A one-process run never starts a process group; one left behind would leak into the next test.
        leaked = torch.distributed.is_available() and torch.distributed.is_initialized()
        if leaked:
            torch.distributed.destroy_process_group()
        gc.collect()  # the run's models, optimizers and loader workers, before the next test
        os.chdir(cwd)
        sys.argv = old_argv
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_rng_state(rngs[0]), random.setstate(rngs[1]), np.random.set_state(rngs[2])
        for s, h in handlers.items():
            signal.signal(s, h)
        root.handlers[:], root.level = log_handlers, log_level
        os.environ.clear()  # last: restoring torch's flags can set variables (torch._inductor's cache dir)
        os.environ.update(environ)
        assert not leaked, "a one-process run left torch.distributed initialised"
