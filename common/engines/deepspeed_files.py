"""engine=deepspeed's checkpoint files: ZeRO partitions under checkpoints/step_N/deepspeed/<name>/.

Every rank writes its partition (engine.save_checkpoint); a failed write is kept until DeepSpeed's
barriers are behind it (write_errors_kept). DeepSpeed unpickles with full power, so every file it
may read passes the weights_only check first (refuse_code with safe_types). read_full_weights
gathers the partitions of every rank into full fp32 weights on one process (--export, --evaluate).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
from pathlib import Path

import torch

from common.config import UserError
from common.formats.checkpoint import load_file, refuse_code

TAG = "state"  # DeepSpeed's tag (sub-folder) inside checkpoints/step_N/deepspeed/<name>/
# The classes (by name) DeepSpeed 0.19 pickles into its checkpoint files besides tensors and plain values,
# found by inspecting real ZeRO-2 checkpoints (torch.serialization.get_unsafe_globals_in_checkpoint).
# Each is plain data: an Enum, a dataclass, loss scalers whose state is attributes. Allowing them lets
# weights_only=True construct them, nothing more; any other global in a file is refused.
SAFE_TYPES = ("deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.runtime.fp16.loss_scaler.LossScaler",
              "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler", "deepspeed.utils.tensor_fragment.fragment_address")


@contextlib.contextmanager
def write_errors_kept(engine):
    """Within: the engine's file writes (its checkpoint_engine's save and makedirs, the recovery script
    copy) keep their first failure in the yielded list instead of raising it, and skip once one failed."""
    kept: list[BaseException] = []
    inner, copy = engine.checkpoint_engine, getattr(engine, "_copy_recovery_script", None)  # rank 0's zero_to_fp32.py

    def keep(fn):
        def call(*args, **kwargs):
            if kept:
                return None
            try:
                return fn(*args, **kwargs)
            except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
                kept.append(e)
        return call

    class Keeping:  # the checkpoint engine, but for these two
        def __getattr__(self, name):
            return getattr(inner, name)

    keeping = Keeping()
    keeping.save, keeping.makedirs = keep(inner.save), keep(inner.makedirs)
    engine.checkpoint_engine = keeping
    if copy is not None:
        engine._copy_recovery_script = keep(copy)
    try:
        yield kept
    finally:
        engine.checkpoint_engine = inner
        if copy is not None:
            del engine._copy_recovery_script  # the class's method again


def safe_types() -> list[type]:
    found = []
    for name in SAFE_TYPES:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # another DeepSpeed version: that class is refused like any other
            pass
    return found


def check_partitions(where: Path, world_size: int) -> None:
    """Before DeepSpeed loads the partitions under `where` (deepspeed/<name>/): one per rank of this run,
    and every file it may read passes the weights_only check (DeepSpeed loads with weights_only=False)."""
    parts = list((where / TAG).glob("*zero_pp_rank_*optim_states.pt"))
    if parts and len(parts) != world_size:
        raise UserError(f"{where} holds ZeRO partitions for {len(parts)} ranks, this run has {world_size}: "
                        "resume with the same world size, or export weights with its zero_to_fp32.py and "
                        "start a new run from them")
    refuse_code(sorted(f for f in (where / TAG).rglob("*") if f.is_file()), safe_types())


def read_full_weights(ckpt_dir) -> dict[str, dict[str, torch.Tensor]]:
    """{model name: full fp32 state_dict} of a checkpoint written under engine=deepspeed, on this process:
    the ZeRO-1/2/3 partitions of every rank gathered by DeepSpeed's zero_to_fp32, after each of its files
    passed the weights_only check (refuse_code; zero_to_fp32 itself unpickles with full power). Collective
    when a process group is up: call it on every rank."""
    if not torch.cuda.is_available():  # else DeepSpeed's import warns that it picked the CPU "if you have a GPU"
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # lazily: seconds to import

    ckpt_dir = Path(ckpt_dir)
    out = dict(load_file(ckpt_dir)["models"])  # models DeepSpeed did not own, if any
    for where in sorted(p for p in (ckpt_dir / "deepspeed").iterdir() if p.is_dir()):
        refuse_code(sorted(f for f in (where / TAG).rglob("*") if f.is_file()), safe_types())
        with contextlib.redirect_stdout(None), contextlib.redirect_stderr(io.StringIO()):  # a line per group, a bar
            out[where.name] = get_fp32_state_dict_from_zero_checkpoint(str(where), tag=TAG)
    return out
