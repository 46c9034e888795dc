"""The process environment: rank, world size, device, process group and layout.

What every part of a run reads about where it runs, apart from how models are trained
(that is the engine's, common/engines/). Built once per process by the entry point
(common/entry.py); `close()` tears the process group down.
"""
from __future__ import annotations

import sys

import torch

from common import dist
from common.config import UserError, seed_bits


class Env:
    def __init__(self, cfg):
        self.info = dist.init(cfg.device, cfg.dist_timeout_s)
        self.device = self.info.device
        self.rank, self.world_size, self.is_main = self.info.rank, self.info.world_size, self.info.is_main
        channels_last = cfg.train.channels_last
        if channels_last == "auto":  # NHWC lets cuDNN use tensor-core kernels without layout transposes
            channels_last = self.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # Every rank's placement, gathered once before anything trains; a bad layout stops all ranks.
        self.layout_rows = dist.all_gather_object(dist.layout_facts(self.info))
        errors, self.layout_notes = dist.check_layout(self.layout_rows)
        if errors:
            self.close(clean=True)  # every rank saw the same rows and stops here
            raise UserError("process layout is wrong:\n  " + "\n  ".join(errors))

    def mapping(self) -> list[str]:
        """Every rank's mapping, in rank order (a collective: call it on every rank)."""
        return dist.all_gather_object(self.info.describe())

    def layout(self) -> list[str]:
        """The layout notes, then the verdict."""
        hosts = len({r["host"] for r in self.layout_rows})
        return [*(f"layout note: {n}" for n in self.layout_notes),
                f"layout ok: {self.world_size} process(es) on {hosts} host(s)"]

    def seed(self, seed: int) -> None:
        """Same seed on every rank: identical initial weights (DDP also broadcasts them)."""
        torch.manual_seed(seed_bits(seed))

    def log(self, msg: str) -> None:
        if self.is_main:
            print(msg, file=sys.stdout, flush=True)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return dist.all_reduce_sum(t)

    def close(self, clean: bool) -> None:
        """clean: every rank got here (normal end, dry run, agreed preemption), so barrier first.
        Otherwise another rank may be gone: just drop the group so this process can exit."""
        if clean:
            dist.teardown()
        elif torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
