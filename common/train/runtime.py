"""The runtime every command runs in: the process environment (common/env.py) and the engine for the
config, torn down together.
"""
from __future__ import annotations

import contextlib

from common.engines import make_engine, resolve_engine
from common.env import Env
from common.train.preempt import EXIT_INTERRUPTED, EXIT_PREEMPTED


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
    except SystemExit as e:  # an agreed exit (preemption, Ctrl-C): every rank is here
        clean = e.code in (0, None, EXIT_PREEMPTED, EXIT_INTERRUPTED)
        raise
    finally:
        env.close(clean)
