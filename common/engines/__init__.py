"""Pick the training engine: `engine=ddp|accelerate|deepspeed`, or `auto` from the launcher.

    engine=ddp         common/engines/base.py          torch DDP + autocast/GradScaler (python, torchrun, srun)
    engine=accelerate  common/engines/accelerate.py  HF Accelerator: DDP, mixed precision, accumulation
    engine=deepspeed   common/engines/deepspeed.py   deepspeed.initialize per model: ZeRO 1/2/3, bf16/fp16

`accelerate launch` and the `deepspeed` command each leave their own variables in the
environment, so `engine=auto` (the default) picks the matching engine. An explicit engine
that contradicts the launcher is an error: `accelerate launch ... engine=ddp` would silently
ignore the Accelerate config file (its mixed precision, its process count). torchrun, srun
and plain python suit every engine.
"""
from __future__ import annotations

import os
import sys

from common import dist
from common.config import ConfigError
from common.engines.base import Runtime

BY_LAUNCHER = {"accelerate": "accelerate", "deepspeed": "deepspeed"}
COMMANDS = {"accelerate": "accelerate launch", "deepspeed": "the `deepspeed` launcher"}


def resolve_engine(requested: str, env=os.environ) -> str:
    launcher = dist.launcher_of(env)
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ConfigError("this `accelerate launch` config enables DeepSpeed (distributed_type: DEEPSPEED); dtrain "
                          "drives DeepSpeed itself: launch with `deepspeed --num_gpus N recipes/<name>.py` (or torchrun) "
                          "and pick the ZeRO stage with deepspeed_config=launch/deepspeed/zero<N>.json")
    implied = BY_LAUNCHER.get(launcher)
    if requested == "auto":
        return implied or "ddp"
    if implied and requested != implied:
        raise ConfigError(f"engine={requested} but the job was started by {COMMANDS[launcher]}, which implies "
                          f"engine={implied}: drop engine= (auto picks {implied}) or start it with "
                          f"{'torchrun' if requested != 'ddp' else 'python/torchrun'} instead")
    return requested


def make_runtime(cfg, recipe: str) -> Runtime:
    """The runtime for cfg.engine; cfg.engine is replaced by the resolved name (it goes to config.yaml)."""
    try:
        cfg.engine = resolve_engine(cfg.engine)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if cfg.engine == "accelerate":
        from common.engines.accelerate import AccelerateRuntime
        return AccelerateRuntime(cfg, recipe)
    if cfg.engine == "deepspeed":
        from common.engines.deepspeed import DeepSpeedRuntime
        return DeepSpeedRuntime(cfg, recipe)
    return Runtime(cfg, recipe)
