"""The entry point every recipe goes through, and the one place errors become exit codes.

    python recipes/<name>.py [--config FILE ...] [--dry-run] [key=value ...]
    python recipes/<name>.py --evaluate RUN_DIR_OR_CHECKPOINT | --export RUN_DIR_OR_CHECKPOINT [--to FILE] [--overwrite]
    python recipes/<name>.py --predict RUN_DIR_OR_CHECKPOINT_OR_EXPORT --input PATH [--top-k K] [--to FILE]

Task is the contract every recipe's `task` fulfils (built by common/tasks/); the entry point, the
after-training commands, tests and benchmarks use its members and nothing else. run() is the whole
run, in-process (tests call it), and returns the exit code (docs/reliability.md#exit-codes);
Task.main() runs it, then exit_after() ends the process: group destroyed, garbage collected, atexit
handlers run, streams flushed, os._exit(code) (why: docs/reliability.md#why-the-process-ends-with-os_exit).
"""
from __future__ import annotations

import atexit
import dataclasses
import gc
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, NoReturn

from common import dist, launcher
from common.config import BaseConfig, UserError
from common.cli import parse_cli
from common.config import dump_yaml
from common.data.gpu_decode import require_cuda
from common.data.sampling import check_batch
from common.lifecycle import evaluate, export, predict
from common.train import checks
from common.train.report import batch_split
from common.train.loop import fit, total_steps
from common.train.preempt import EXIT_INTERRUPTED
from common.train.runtime import runtime
from common.train.state import TrainState, build_state
from common.train.stopping import watched

# The callable members and the positional arguments each is called with.
CALLS = {"build_data": ("cfg", "rt"), "build_models": ("cfg", "loaders"),
         "train_step": ("cfg", "batch", "state", "rt"), "evaluate": ("cfg", "state", "rt", "loader")}


def _takes(fn, args) -> bool:
    try:
        inspect.signature(fn).bind(*args)
    except (TypeError, ValueError):  # not callable, or another number of arguments
        return False
    return True


@dataclass(frozen=True)
class Task:
    """What a recipe is to everything that runs it (docs/usage.md, "Writing a recipe"). Classifier(...)
    and GanTask(...) build one; a member that is missing or does not fit is a TypeError when it is built."""
    Config: type  # the recipe's config dataclass, a BaseConfig
    script: str  # the recipe's __file__: its name goes into checkpoints, configs/<name>.yaml is its base
    build_data: Callable  # (cfg, rt, **saved) -> Loaders; saved: a checkpoint's `classes` and `stats`, when it has them
    build_models: Callable  # (cfg, loaders) -> {name: nn.Module}; reads only loaders.shape and loaders.num_classes
    train_step: Callable  # (cfg, batch, state, rt) -> {name: tensor}; does its own rt.backward and rt.step
    evaluate: Callable  # (cfg, state, rt, loader) -> {name: number or Grid} over the whole eval split
    ema: tuple[str, ...]  # the models with an EMA copy (train.ema_decay > 0), which evaluation uses
    exported: str  # the model --export writes and load_model builds
    metrics: dict[str, str] = dataclasses.field(default_factory=dict)  # "val/<name>" evaluate can log -> "max"|"min" (better); {} = not declared
    inputs: Callable | None = None  # (cfg, batch) -> {name: tensor}: the exported model's inputs from an eval batch; None = {"images": batch[0]}

    def __post_init__(self):
        if not (isinstance(self.Config, type) and issubclass(self.Config, BaseConfig)
                and dataclasses.is_dataclass(self.Config)):
            raise TypeError(f"Task.Config must be a dataclass deriving from BaseConfig, not {self.Config!r}")
        if not (isinstance(self.script, str) and self.script.endswith(".py")):
            raise TypeError(f"Task.script must be the recipe's __file__, not {self.script!r}")
        for name, args in CALLS.items():
            fn = getattr(self, name)
            if not _takes(fn, args):
                raise TypeError(f"Task.{name} must be called as {name}({', '.join(args)}); got {fn!r}")
        if self.inputs is not None and not _takes(self.inputs, ("cfg", "batch")):
            raise TypeError(f"Task.inputs must be called as inputs(cfg, batch); got {self.inputs!r}")
        if not (isinstance(self.ema, tuple) and all(isinstance(n, str) for n in self.ema)
                and isinstance(self.exported, str)):
            raise TypeError(f"Task.ema must be a tuple of model names and Task.exported one name, not "
                            f"{self.ema!r} and {self.exported!r}")
        if not isinstance(self.metrics, dict) or not all(isinstance(k, str) and k.startswith("val/") and v in ("max", "min") for k, v in self.metrics.items()):
            raise TypeError(f"Task.metrics must map 'val/<name>' to 'max' or 'min', not {self.metrics!r}")

    def build_state(self, cfg, rt, loaders) -> TrainState:
        """The models from build_models (seeded), placed, with optimizers, LR schedules, EMA copies of
        `ema`, wrapped by the engine."""
        rt.seed()
        models = self.build_models(cfg, loaders)
        if self.exported not in models or not set(self.ema) <= set(models):
            raise TypeError(f"Task.exported {self.exported!r} and Task.ema {self.ema} must name models "
                            f"build_models returns: {sorted(models)}")
        return build_state(cfg, rt, models, total_steps(cfg, loaders.train), ema=self.ema)

    def main(self, argv=None) -> NoReturn:
        """The script's entry: run, then end the process with the run's exit code."""
        exit_after(lambda: run(self, self.script, argv))


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


def run(task: Task, script: str, argv=None):
    """Parse the command line for task.Config, then dry-run, train, or evaluate/export/predict with a finished run
    (common/lifecycle/); returns the final metrics."""
    try:
        cli = parse_cli(task.Config, script, argv)
        if cli.action != "train":
            return {"evaluate": evaluate.run, "export": export.run, "predict": predict.run}[cli.action](task, cli)
        watched(cli.cfg, task.metrics)  # early stopping's and the plateau schedule's metric: before anything starts
        with runtime(cli.cfg) as rt:
            reps = getattr(cli.cfg.data, "ra_reps", 1)  # the classifiers' repeated augmentation; 1 where a recipe has none
            check_batch(cli.cfg.train.batch_size, rt.world_size, cli.cfg.train.grad_accum, reps)
            require_cuda(cli.cfg.data, rt.device)  # data.decode=gpu without CUDA: refused before the dry run or any file
            if cli.dry_run:
                return dry_run(cli, rt)
            loaders = task.build_data(cli.cfg, rt)
            for warning in checks.warnings(cli.cfg, total_steps(cli.cfg, loaders.train), loaders.train.plan.n):
                rt.log(f"warning: {warning}")
            state = task.build_state(cli.cfg, rt, loaders)
            return fit(cli.cfg, state, rt, loaders, task.train_step, task.evaluate, cli.recipe, task.metrics)
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
