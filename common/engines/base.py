"""Runtime: device, DDP wrapping, autocast, GradScaler, accumulation, clipping, frozen().

The recipe owns backward and optimizer steps and calls `rt.backward(loss)` and
`rt.step(optimizer)`; the loop tells the runtime which micro-step of an optimizer
step is running, so non-final micro-steps skip the all-reduce (DDP no_sync) and
`step` only acts on the final one. One GradScaler serves every optimizer and is
updated once per optimizer step in `end_step()`.
"""
from __future__ import annotations

import contextlib
import sys

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from common import dist
from common.config import UserError, dump_yaml
from common.data.memory import check_batch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _is_engine_wrapper(model) -> bool:
    """DDP, or a DeepSpeed engine (checked by class name: importing deepspeed here costs seconds)."""
    return isinstance(model, DDP) or any(c.__name__ == "DeepSpeedEngine" for c in type(model).__mro__)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP, DeepSpeed and torch.compile wrappers (its state_dict has no prefixes)."""
    while True:
        if _is_engine_wrapper(model):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class Runtime:
    """engine=ddp. Accelerate and DeepSpeed runtimes (common/engine_*.py) subclass it; recipes
    get one from common.engines.make_runtime and call only the methods below."""

    engine = "ddp"

    def __init__(self, cfg, recipe: str = "recipe"):
        self.cfg, self.recipe = cfg, recipe
        self.info = dist.init(cfg.device, cfg.dist_timeout_s)
        self.layout_notes: list[str] = []
        self.device = self.info.device
        self.rank, self.world_size, self.is_main = self.info.rank, self.info.world_size, self.info.is_main
        self.dtype = DTYPES[cfg.precision]
        if self.dtype is torch.bfloat16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError("precision=bf16 needs an Ampere or newer GPU; use precision=fp16")
        # fp16 needs loss scaling to keep small gradients representable; bf16 does not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        channels_last = cfg.train.channels_last
        if channels_last == "auto":  # NHWC lets cuDNN use tensor-core kernels without layout transposes
            channels_last = self.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.micro, self.n_micro = 0, 1
        self._ddp: list[DDP] = []
        self.logger = None  # set by fit(): lets evaluate() write image grids (rt.logger.images)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        try:
            check_batch(cfg.train.batch_size, self.world_size, cfg.train.grad_accum)
            self._check_layout()
        except UserError as e:
            self.__exit__(type(e), e, None)

    def _check_layout(self) -> None:
        """Every rank's placement, gathered once before anything trains; a bad layout stops all ranks."""
        self.layout_rows = rows = dist.all_gather_object(dist.layout_facts(self.info))
        errors, self.layout_notes = dist.check_layout(rows)
        if errors:
            raise UserError("process layout is wrong:\n  " + "\n  ".join(errors))

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # A normal end or an agreed exit (preemption): every rank is here, so barrier + destroy.
        if exc_type is None or exc_type is SystemExit:
            dist.teardown()
            return False
        if torch.distributed.is_initialized():
            # Another rank may be gone: no barrier, just drop the group so this process exits.
            torch.distributed.destroy_process_group()
        if isinstance(exc, UserError):
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        return False

    def dry_run(self) -> None:
        """Print the config (rank 0) and every rank's mapping, in rank order, then return."""
        if self.is_main:
            print(f"# resolved config for {self.recipe}\n{dump_yaml(self.cfg)}", flush=True)
        lines = dist.all_gather_object(self.info.describe())
        if self.is_main:
            print("\n".join(lines), flush=True)
            t = self.cfg.train
            print(f"global batch {t.batch_size} = world {self.world_size} x grad_accum {t.grad_accum} "
                  f"x micro-batch {t.batch_size // (self.world_size * t.grad_accum)}", flush=True)
            for note in self.layout_notes:
                print(f"layout note: {note}", flush=True)
            print(f"engine {self.engine}: {self.describe_engine()}", flush=True)
            print(f"layout ok: {self.world_size} process(es) on {len({r['host'] for r in self.layout_rows})} "
                  "host(s)", flush=True)

    def describe_engine(self) -> str:
        return "torch DDP" + (f", {self.cfg.precision} autocast" if self.dtype else ", fp32")
    def seed(self, offset: int = 0) -> None:
        """Same seed on every rank: identical initial weights (DDP also broadcasts them)."""
        torch.manual_seed(self.cfg.seed + offset)

    # -- models ----------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """Move to the device, then optional SyncBatchNorm, channels_last, compile; DDP when world > 1."""
        t = self.cfg.train
        if t.sync_bn and self.world_size > 1:
            if self.device.type != "cuda":
                raise UserError("train.sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                                "kernel); set train.sync_bn=false on CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device, memory_format=self.memory_format)
        if t.compile:
            model = torch.compile(model)
        if self.world_size > 1:
            model = DDP(model, device_ids=[self.device] if self.device.type == "cuda" else None,
                        gradient_as_bucket_view=True)
            self._ddp.append(model)
        return model

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # -- optimisation ----------------------------------------------------------------------
    @property
    def last_micro(self) -> bool:
        return self.micro == self.n_micro - 1

    @contextlib.contextmanager
    def micro_step(self, i: int, n: int):
        """Set by the loop around each micro-batch; non-final ones run under DDP no_sync."""
        self.micro, self.n_micro = i, n
        with contextlib.ExitStack() as stack:
            if not self.last_micro:
                for m in self._ddp:
                    stack.enter_context(m.no_sync())
            yield

    def backward(self, loss: torch.Tensor) -> None:
        # Mean over micro-batches; skip the divide (one op forward and backward) when there is one.
        self.scaler.scale(loss / self.n_micro if self.n_micro > 1 else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale, clip, step and zero the grads; only on the final micro-step."""
        if not self.last_micro:
            return
        if self.cfg.train.clip_grad_norm > 0:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.clip_grad_norm, foreach=True)
        self.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    def end_step(self) -> None:
        """Once per optimizer step, after every optimizer has stepped."""
        self.scaler.update()

    @contextlib.contextmanager
    def frozen(self, model: nn.Module):
        """Yield the plain module with requires_grad off: a G step through D computes no D
        gradients and, since DDP's wrapper is bypassed, triggers no D all-reduce."""
        inner = model.module if _is_engine_wrapper(model) else model
        flags = [(p, p.requires_grad) for p in inner.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield inner
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    # -- engine hooks, called by the loop (no-ops for DDP) ------------------------------------
    def prepare(self, state) -> None:
        """Called by fit() once the recipe has built models and optimizers, before resuming."""

    save_shards = None  # or a callable(dir) that every rank calls to write engine files into a checkpoint

    def load_shards(self, state, ckpt_dir) -> None:
        """Restore what save_shards wrote (after state.load_state_dict)."""

    # -- collectives -----------------------------------------------------------------------
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return dist.all_reduce_sum(t)

    def log(self, msg: str) -> None:
        if self.is_main:
            print(msg, file=sys.stdout, flush=True)
