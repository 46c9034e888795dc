"""The training engines, and which one a run gets: `engine=ddp|accelerate|deepspeed|fsdp`, or `auto`.

    engine=ddp         common/engines/ddp.py         torch DDP + autocast/GradScaler (python, torchrun, srun)
    engine=accelerate  common/engines/accelerate.py  HF Accelerator: DDP, mixed precision, accumulation
    engine=deepspeed   common/engines/deepspeed.py   deepspeed.initialize per model: ZeRO 1/2/3, bf16/fp16
    engine=fsdp        common/engines/fsdp.py        torch FSDP2 fully_shard per block, DCP checkpoints that reshard

Adding an engine: one module with an Engine subclass (common/engines/base.py) and one line in
ENGINES. `accelerate launch` and the `deepspeed` command each leave their own variables in
the environment, so `engine=auto` (the default) picks the matching engine. An explicit engine
that contradicts the launcher is an error: `accelerate launch ... engine=ddp` would silently
ignore the Accelerate config file (its mixed precision, its process count). torchrun, srun
and plain python suit every engine.
"""
from __future__ import annotations

import importlib
import os

from common import dist
from common.config import ConfigError
from common.engines import base

# name -> "module:class", imported only when chosen (DeepSpeed and Accelerate take seconds to import)
ENGINES = {
    "ddp": "common.engines.ddp:DDPEngine",
    "accelerate": "common.engines.accelerate:AccelerateEngine",
    "deepspeed": "common.engines.deepspeed:DeepSpeedEngine",
    "fsdp": "common.engines.fsdp:FSDPEngine",
}
BY_LAUNCHER = {"accelerate": "accelerate", "deepspeed": "deepspeed"}
COMMANDS = {"accelerate": "accelerate launch", "deepspeed": "the `deepspeed` launcher"}


def resolve_engine(requested: str, env=os.environ) -> str:
    if requested != "auto" and requested not in ENGINES:
        raise ConfigError(f"engine={requested!r} is not one of auto, {', '.join(ENGINES)}")
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


def full_weights_reader(engine: str):
    """`read_full_weights(ckpt_dir) -> {model name: full state_dict}` for checkpoints written under `engine`:
    the engine module's own (DeepSpeed gathers ZeRO partitions), else the plain state.pt reader of base.py."""
    if engine not in ENGINES:
        raise ConfigError(f"the checkpoint was written with engine={engine!r}, which this version does not know "
                          f"({', '.join(ENGINES)}); read it with the dtrain version that wrote it")
    module = importlib.import_module(ENGINES[engine].split(":")[0])
    return getattr(module, "read_full_weights", base.read_full_weights)


def make_engine(cfg, env):
    """The engine for cfg.engine (already resolved by resolve_engine)."""
    module, cls = ENGINES[cfg.engine].split(":")
    return getattr(importlib.import_module(module), cls)(cfg, env)
