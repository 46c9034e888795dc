"""How a recipe process ends: run main, tear down in order, exit with the documented code.

    if __name__ == "__main__":
        from common.entry import run
        run(main)

Exit codes, the same on every rank and under every launcher (python, torchrun, accelerate
launch, deepspeed, srun):
    0   finished; also --help and --dry-run
    2   user error (config, batch arithmetic, process layout), message on stderr
    75  preempted: the checkpoint is written, re-run or requeue to continue (common.loop.EXIT_PREEMPTED)
    1   any other error (traceback on stderr); 130 interrupted (Ctrl-C)

Why the process ends with os._exit and not by returning to the interpreter: destroy_process_group
does not end gloo's threads while something still holds the group, and after a DDP run (the DDP
constructor leaves a reference in C++) or any DeepSpeed run, dry runs included, something does.
Measured on torch 2.14.1: after main() returned, destroy_process_group ran and gc.collect(), every
rank still had gloo's threads (2 x pt_gloo_runloop, gloo_tcp_loop) with no Python object left
referring to the group. Those threads then live into interpreter finalization and C++ static
destruction, where a gloo thread that needs the GIL is ended with pthread_exit (or a joinable
std::thread is destroyed), and std::terminate aborts the process: "terminate called without an
active exception", -6 (250 through the deepspeed launcher). A finished run then looks like a
crash to torchrun, SLURM and every sweep built on them. So after the orderly part of the exit
(process group destroyed, garbage collected while Python is fully alive, atexit handlers run,
stdout/stderr flushed) nothing is left whose destruction matters, and os._exit(code) ends the
process without interpreter finalization or C++ static destructors.
Everything a run writes (checkpoints, metrics.jsonl, TensorBoard events) is closed by fit()
before main returns.
"""
from __future__ import annotations

import atexit
import gc
import os
import sys
import traceback
from typing import Callable, NoReturn

from common import dist

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


def run(main: Callable[[], object]) -> NoReturn:
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
