"""Batch arithmetic shared by every loader: how an epoch is cut into global batches and rank
shards, the per-epoch order and augmentation seeds, and the exact evaluation shards.

Two different `drop_last`s (docs/data.md, "How batches are cut"):
  * sampler level: an epoch's samples must split into equal shards, one per rank.
    The last global batch may not divide by world size: its shards are padded with
    repeats from the start of the epoch's order.
  * loader level (`data.drop_last`): drop the last *short* global batch entirely
    (default), so every step has the same global batch size on every rank.
Training shuffles with a permutation that depends only on (seed, epoch), and a
position in that permutation is the only cursor: resuming at step k skips k global
batches by arithmetic, without touching the data. Evaluation shards are unpadded,
so every sample is counted exactly once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from common.config import ConfigError, seed_bits

@dataclass(frozen=True)
class TrainPlan:
    """How one epoch of `n` samples is cut into global batches and rank shards."""
    n: int
    global_batch: int
    world: int
    drop_last: bool

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world

    @property
    def steps(self) -> int:
        full, tail = divmod(self.n, self.global_batch)
        return full + (1 if tail and not self.drop_last else 0)

    def shard(self, step: int, rank: int) -> tuple[int, int]:
        """[start, stop) positions in the epoch's order for this rank at this step.

        Positions >= n wrap around to the start of the order (padding with repeats).
        """
        start = step * self.global_batch
        size = min(self.global_batch, self.n - start)
        local = math.ceil(size / self.world)  # equal shards; the tail shard may repeat samples
        return start + rank * local, start + (rank + 1) * local

    @property
    def padded(self) -> int:
        """Repeated samples per epoch (only with drop_last=False and a tail not divisible by world)."""
        tail = self.n % self.global_batch
        return 0 if self.drop_last or not tail else math.ceil(tail / self.world) * self.world - tail

    @property
    def dropped(self) -> int:
        return self.n % self.global_batch if self.drop_last else 0


def check_batch(global_batch: int, world: int, accum: int) -> None:
    if global_batch % (world * accum):
        lo = global_batch // (world * accum) * world * accum
        sizes = " or ".join(map(str, sorted({lo or world * accum, lo + world * accum})))
        # A resumed run keeps its global batch: name the process counts it divides into, not only the
        # batch sizes a run without a checkpoint could use.
        counts = [p for p in range(1, global_batch // accum + 1) if global_batch % (p * accum) == 0]
        near = [max((p for p in counts if p < world), default=None), min((p for p in counts if p > world), default=None)]
        near = " or ".join(str(p) for p in near if p is not None)
        keep = (f"run on {near} processes" if near else "change train.grad_accum") + " (a resumed run keeps its global batch)"
        raise ConfigError(f"train.batch_size={global_batch} is the global batch and must be divisible by "
                          f"world_size x train.grad_accum = {world} x {accum} = {world * accum}; {keep}, or, "
                          f"for a new run, use train.batch_size={sizes}")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation for an epoch: a function of (seed, epoch) only, identical on every rank."""
    g = torch.Generator().manual_seed(seed_bits(seed * 1_000_003 + epoch))
    return torch.randperm(n, generator=g)


def augment_generator(seed: int, epoch: int) -> torch.Generator:
    """The private generator of an epoch's per-sample augmentation draws (crops, flips, seeds).

    A function of (seed, epoch) only, like epoch_order, and independent of it; every loader
    (in-memory, image folders) draws from it by epoch position, so a sample's augmentation does
    not depend on world size, worker count, or where the run resumed.
    """
    return torch.Generator().manual_seed(seed_bits(seed * 1_000_003 + epoch + 7_777_777))


def eval_shard(n: int, world: int, rank: int) -> torch.Tensor:
    """Unpadded strided shard: shards differ in length by at most one, their union is range(n)."""
    return torch.arange(n)[rank::world]
