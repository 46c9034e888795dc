"""engine=ddp: torch DistributedDataParallel with autocast and a GradScaler (python, torchrun, srun).

One process: no wrapper at all. Several: each model in DDP; non-final micro-steps of an
optimizer step run under no_sync(), so gradients are all-reduced once per optimizer step.
"""
from __future__ import annotations

import contextlib

from torch.nn.parallel import DistributedDataParallel as DDP

from common.engines.base import Engine


class DDPEngine(Engine):
    name = "ddp"

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self._ddp: list[DDP] = []

    def prepare(self, models, optims):
        if self.world_size > 1:
            cuda = self.device.type == "cuda"
            models = {k: DDP(m, device_ids=[self.device] if cuda else None, gradient_as_bucket_view=True)
                      for k, m in models.items()}
            self._ddp = list(models.values())
        return dict(models), dict(optims)

    def describe(self) -> str:
        return "torch DDP" + (f", {self.cfg.precision} autocast" if self.dtype else ", fp32")

    @contextlib.contextmanager
    def micro_step(self, i: int, n: int):
        self.micro, self.n_micro = i, n
        with contextlib.ExitStack() as stack:
            if not self.last_micro:
                for m in self._ddp:
                    stack.enter_context(m.no_sync())
            yield
