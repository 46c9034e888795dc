"""engine=accelerate: Hugging Face Accelerate drives DDP, mixed precision and accumulation.

`rt.prepare` is `accelerator.prepare_model`/`prepare_optimizer`, `rt.backward` is
`accelerator.backward`, and every micro-step runs inside `accelerator.accumulate(*models)`.
The process group and the data stay ours (the same sharding under every engine), and checkpoints
are engine=ddp's files, so a run can resume under the other engine. An Accelerate config that asks
for another `mixed_precision` (or a dynamo backend) than `precision=` is an error.
Why: docs/launch.md#engines.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from common.config import UserError
from common.engines.base import Engine, total_norm

MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


class AccelerateEngine(Engine):
    name = "accelerate"

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self._check_launcher_config()
        self.accelerator = Accelerator(
            cpu=self.device.type == "cpu", mixed_precision=MIXED[cfg.precision],
            gradient_accumulation_steps=cfg.train.grad_accum,
            kwargs_handlers=[DistributedDataParallelKwargs(gradient_as_bucket_view=True)])
        acc = self.accelerator
        # A launch that started fewer processes than we see (or the other way round) trains wrongly.
        acc_index = acc.device.index if acc.device.index is not None else (
            torch.cuda.current_device() if acc.device.type == "cuda" else None)
        same_device = acc.device.type == self.device.type and (self.device.type != "cuda" or acc_index == self.device.index)
        if acc.num_processes != self.world_size or acc.process_index != self.rank or not same_device:
            raise UserError(f"Accelerate sees process {acc.process_index} of {acc.num_processes} on {acc.device}, "
                            f"dtrain sees rank {self.rank} of {self.world_size} on {self.device}: check the launch command")
        # Accelerate owns loss scaling: one GradScaler, stepped and updated in each optimizer.step().
        self.scaler = acc.scaler or torch.amp.GradScaler(self.device.type, enabled=False)
        self._models: list[nn.Module] = []
        self._prepared: dict[int, object] = {}  # id(raw or prepared optimizer) -> AcceleratedOptimizer

    def _check_launcher_config(self) -> None:
        env_mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        if env_mp not in ("no", MIXED[self.cfg.precision]):
            raise UserError(f"the Accelerate config says mixed_precision: {env_mp}, the recipe config says "
                            f"precision={self.cfg.precision}: set precision={env_mp} "
                            "on the command line, or mixed_precision: 'no' in the Accelerate config (dtrain reads precision=)")
        dynamo = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "NO").upper()
        if dynamo != "NO":
            raise UserError(f"the Accelerate config sets dynamo_backend: {dynamo}; use train.compile=true instead "
                            "(dtrain compiles before wrapping) and dynamo_backend: 'NO'")
        if self.world_size == 1 and "MASTER_ADDR" in os.environ and "ACCELERATE_MIXED_PRECISION" in os.environ:
            self.log("warning: `accelerate launch` set MASTER_ADDR (it was asked for several processes) but started "
                     "one: with use_cpu/--cpu, Accelerate starts extra processes only through mpirun "
                     "(mpirun_hostfile); see launch/accelerate/cpu_multi_process.yaml")

    def describe(self) -> str:
        s = self.accelerator.state
        return (f"accelerate {s.distributed_type.value}, {s.num_processes} process(es), mixed_precision "
                f"{s.mixed_precision}, grad_accum {self.accelerator.gradient_accumulation_steps}")

    # -- models ------------------------------------------------------------------------------
    def prepare(self, models, optims):
        """Accelerate's model wrapper (DDP) and optimizer wrapper (scaler, accumulation-aware
        step); schedulers keep driving the same param_groups, and state_dict() is the plain optimizer's."""
        models = {k: self.accelerator.prepare_model(m) for k, m in models.items()}
        self._models = list(models.values())
        prepared = {}
        for name, opt in optims.items():
            prepared[name] = self.accelerator.prepare_optimizer(opt)
            self._prepared[id(opt)] = self._prepared[id(prepared[name])] = prepared[name]
        return models, prepared

    def autocast(self):
        return self.accelerator.autocast()

    # -- optimisation ----------------------------------------------------------------------
    @contextlib.contextmanager
    def micro_step(self, i: int, n: int):
        self.micro, self.n_micro = i, n
        with self.accelerator.accumulate(*self._models):
            # accumulate() counts micro-steps itself; ours come in whole groups, so both agree.
            if self.accelerator.sync_gradients != self.last_micro:
                raise RuntimeError(f"Accelerate's accumulation counter is out of step with the loop "
                                   f"(micro-step {i + 1}/{n}, sync_gradients={self.accelerator.sync_gradients})")
            yield

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, optimizer) -> None:
        if not self.last_micro:
            return
        opt = self._prepared.get(id(optimizer))
        if opt is None:
            raise RuntimeError("rt.step got an optimizer that rt.prepare did not return")
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if self.cfg.train.clip_grad_norm > 0:  # unscales first; returns the norm before clipping
            self._grad_norms[id(optimizer)] = self.accelerator.clip_grad_norm_(params, self.cfg.train.clip_grad_norm)
        elif self.want_grad_norm:
            self.accelerator.unscale_gradients(opt)
            self._grad_norms[id(optimizer)] = total_norm(params)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def end_step(self) -> None:
        """Nothing: Accelerate updates its scaler inside each optimizer step."""
