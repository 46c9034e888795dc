"""What every engine shares, and the calls recipes and the loop make on one.

An engine decides how models and optimizers are wrapped and how backward, accumulation,
clipping and optimizer steps run; it saves and loads its own state (loss scaler, shards).
Where the process runs (rank, device, process group) is the Env's (common/env.py); an
engine reads it through `rt.env` and the few properties below.

Recipes call: `rt.autocast()`, `rt.backward(loss)`, `rt.step(optimizer)`, `rt.frozen(model)`.
After `backward` the gradients of this micro-batch exist under every engine; `step` acts
only on the final micro-step of an optimizer step. The task builds state with
`rt.place(model)` (device, SyncBatchNorm, memory format, compile) and
`models, optims = rt.prepare(models, optims)` (the engine's wrappers, returned, never
written into the caller's objects). The loop calls `micro_step`, `end_step`, `whole` (around evaluation),
`state_dict`/`load_state_dict` and `save_shards`/`load_shards`.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from common.config import UserError
from common.formats.checkpoint import load_file
from common.models.blocks import checkpoint_blocks

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def read_full_weights(ckpt_dir) -> dict[str, dict[str, torch.Tensor]]:
    """{model name: state_dict} of a checkpoint whose engine keeps plain state_dicts in state.pt (ddp,
    accelerate). An engine that saves weights in its own format defines its own read_full_weights
    (common.engines.full_weights_reader picks it)."""
    return load_file(ckpt_dir)["models"]


def _is_engine_wrapper(model) -> bool:
    """DDP, or a DeepSpeed engine (checked by class name: importing deepspeed here costs seconds)."""
    return isinstance(model, nn.parallel.DistributedDataParallel) or \
        any(c.__name__ == "DeepSpeedEngine" for c in type(model).__mro__)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor (a sharded engine's parameter) is gathered, a collective; others as they are."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP, DeepSpeed and torch.compile wrappers (its state_dict has no prefixes)."""
    while True:
        if _is_engine_wrapper(model):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def total_norm(params) -> torch.Tensor:
    """The 2-norm of all the parameters' gradients together, on their device (no host sync)."""
    grads = [p.grad.detach() for p in params]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]))


class Engine:
    name = "?"

    def __init__(self, cfg, env):
        self.cfg, self.env = cfg, env
        self.dtype = DTYPES[cfg.precision]
        if self.dtype is torch.bfloat16 and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("precision=bf16 needs an Ampere or newer GPU; use precision=fp16")
        # fp16 needs loss scaling to keep small gradients representable; bf16 does not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.micro, self.n_micro = 0, 1
        # Names of models and optimizers whose state this engine saves itself (save_shards), in
        # its own format, instead of as plain state_dicts in state.pt.
        self.owned: set[str] = set()
        # Set by the loop on the optimizer steps whose metrics are logged: step() then records the
        # global gradient norm (free when clipping, which computes it every step anyway).
        self.want_grad_norm = False
        self._grad_norms: dict[int, torch.Tensor] = {}
        if cfg.ckpt.async_save and not self.async_save:
            raise UserError(f"ckpt.async_save=true needs engine=fsdp (engine={self.name} writes its checkpoints "
                            "synchronously); set ckpt.async_save=false or engine=fsdp")

    async_save = False  # whether save_shards can leave its write in flight (ckpt.async_save)

    # Settings the engine reads from outside the recipe config (a DeepSpeed JSON): {key: value}, saved in
    # state.pt by state_dict and compared on resume like config keys. A config key's role is declared on
    # its field (common/fields.py); fixed_settings: the settings a checkpoint of this engine fixes,
    # key -> what it decides. A resume that changes one stops before anything is written.
    settings: dict = {}
    fixed_settings: dict[str, str] = {}

    # -- the environment, as recipes read it ------------------------------------------------
    device = property(lambda self: self.env.device)
    rank = property(lambda self: self.env.rank)
    world_size = property(lambda self: self.env.world_size)
    is_main = property(lambda self: self.env.is_main)
    memory_format = property(lambda self: self.env.memory_format)

    def log(self, msg: str) -> None:
        self.env.log(msg)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.env.all_reduce_sum(t)

    def seed(self, offset: int = 0) -> None:
        self.env.seed(self.cfg.seed + offset)

    def describe(self) -> str:
        return f"{self.name}, " + (f"{self.cfg.precision} autocast" if self.dtype else "fp32")

    # -- models ------------------------------------------------------------------------------
    def place(self, model: nn.Module) -> nn.Module:
        """Optional SyncBatchNorm, the device and memory format, optional torch.compile. The
        parameters keep their identity, so optimizers can be built on the result."""
        if self.cfg.train.sync_bn and self.world_size > 1:
            if self.device.type != "cuda":
                raise UserError("train.sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                                "kernel); set train.sync_bn=false on CPU")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device, memory_format=self.memory_format)
        if self.cfg.train.activation_checkpointing:
            self.log(f"activation checkpointing: {checkpoint_blocks(model)} blocks of {type(model).__name__} "
                     "recompute their activations in backward")
        return torch.compile(model) if self.cfg.train.compile else model

    def prepare(self, models: dict[str, nn.Module], optims: dict[str, torch.optim.Optimizer]):
        """(models, optims) as this engine trains them; called once, after place() and optimizers."""
        return dict(models), dict(optims)

    def whole(self, models):
        """A context in which each model can run forward any number of times on one rank alone
        (evaluation shards differ in length); a sharded engine gathers the weights for it."""
        return contextlib.nullcontext()

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @contextlib.contextmanager
    def frozen(self, model: nn.Module):
        """Yield the plain module with requires_grad off: a G step through D computes no D
        gradients and, since the engine's wrapper is bypassed, triggers no D all-reduce."""
        inner = model.module if _is_engine_wrapper(model) else model
        flags = [(p, p.requires_grad) for p in inner.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield inner
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    # -- optimisation ----------------------------------------------------------------------
    @property
    def last_micro(self) -> bool:
        return self.micro == self.n_micro - 1

    @contextlib.contextmanager
    def micro_step(self, i: int, n: int):
        """Set by the loop around each micro-batch of an optimizer step."""
        self.micro, self.n_micro = i, n
        yield

    def backward(self, loss: torch.Tensor) -> None:
        # Mean over micro-batches; skip the divide (one op forward and backward) when there is one.
        self.scaler.scale(loss / self.n_micro if self.n_micro > 1 else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale, clip, step and zero the grads; only on the final micro-step."""
        if not self.last_micro:
            return
        clip = self.cfg.train.clip_grad_norm
        if clip > 0 or self.want_grad_norm:
            self.scaler.unscale_(optimizer)  # the norm of the true gradients; step() will not unscale twice
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            self._grad_norms[id(optimizer)] = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True) if clip > 0 \
                else total_norm(params)
        self.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    def grad_norm(self, optimizer):
        """The global gradient norm (before clipping) recorded at `optimizer`'s last step, as a device
        tensor, or None when none was recorded (want_grad_norm off and no clipping)."""
        return self._grad_norms.pop(id(optimizer), None)

    def end_step(self) -> None:
        """Once per optimizer step, after every optimizer has stepped."""
        self.scaler.update()

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The engine's own state (tensors and plain values), saved in state.pt."""
        return {"scaler": self.scaler.state_dict(), **({"settings": self.settings} if self.settings else {})}

    def load_state_dict(self, sd: dict) -> None:
        # A checkpoint from an fp32/bf16 run has an empty scaler state: an fp16 resume starts a fresh scale.
        if self.scaler.is_enabled() and sd.get("scaler"):
            self.scaler.load_state_dict(sd["scaler"])

    # Or a callable(dir) that every rank calls to write its files into a checkpoint; it may return a
    # callable that waits for a write left in flight (async_save; common/train/checkpoint.py).
    save_shards = None

    def load_shards(self, ckpt_dir) -> None:
        """Restore what save_shards wrote (after the plain state is loaded)."""
