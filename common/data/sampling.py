"""Batch arithmetic shared by every loader: how an epoch is cut into global batches and rank
shards, the per-epoch order and augmentation seeds, and the exact evaluation shards.

Two different `drop_last`s (docs/data.md, "How batches are cut"):
  * sampler level: an epoch's samples must split into equal shards, one per rank.
    The last global batch may not divide by world size: its shards are padded with
    repeats from the start of the epoch's order.
  * loader level (`data.drop_last`): drop the last *short* global batch entirely
    (default), so every step has the same global batch size on every rank.
Training shuffles with a permutation that depends only on (seed, epoch), and a
position in the epoch is the only cursor: resuming at step k skips k global batches by
arithmetic, without touching the data. Repeated augmentation (reps > 1) keeps the epoch's
length and shows each global batch's batch/reps samples reps times (TrainPlan.views).
Evaluation shards are unpadded, so every sample is counted exactly once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from common.config import ConfigError, seed_bits

@dataclass(frozen=True)
class TrainPlan:
    """How one epoch of `n` samples is cut into global batches and rank shards.

    An epoch is `n` views (a sample with its augmentation), cut into global batches. Without
    repeated augmentation (reps=1) view v shows the sample at position v of the epoch's order.
    With reps > 1 (torchvision's RASampler) an epoch keeps its `n` views and steps, and each
    global batch holds batch/reps consecutive samples of the order, laid out as reps copies
    side by side, [s0 .. sk | s0 .. sk | ...]: copy c of a sample is batch/reps views after
    copy c-1. A rank's shard is batch/world consecutive views, so with world >= reps the reps
    copies land on reps different ranks, whatever the world size; with fewer ranks they share
    them as evenly as the shards allow. The global batch is the same at every world size, each
    copy has its own view position (so its own augmentation draw), and about n/reps distinct
    samples are seen per epoch (`distinct`), a new choice each epoch as the order is reshuffled.
    """
    n: int
    global_batch: int
    world: int
    drop_last: bool
    reps: int = 1  # data.ra_reps: each sample of a global batch appears this many times in it

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

    @property
    def distinct(self) -> int:
        """Distinct samples an epoch shows (the first `distinct` of its order): n - dropped without repeats."""
        full, tail = divmod(self.n, self.global_batch)
        return full * (self.global_batch // self.reps) + (0 if self.drop_last else -(-tail // self.reps))

    def views(self, step: int, rank: int, device=None, lead: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(order positions, view positions) of this rank's shard at `step`, on `device`.

        The shard shows the sample at each order position with the augmentation drawn for its
        view position (per-sample draws are indexed by view). Views >= n wrap to the start of
        the epoch (the padding of a short last batch). lead: the shard is led by `lead(step, rank)`.
        """
        lo, hi = self.shard(step, rank)
        view = torch.arange(lo, hi, device=device)
        if lead:
            view = torch.cat([torch.tensor([self.lead(step, rank)], device=device), view])
        view = view % self.n
        return self.sample_of(view), view

    def lead(self, step: int, rank: int) -> int:
        """The view position the first of this rank's shard is mixed with (common/data/mixing.py): the
        previous one in the global batch, cyclically (rank 0's is the last of the global batch, padding included)."""
        lo, _ = self.shard(step, rank)
        first, _ = self.shard(step, 0)
        _, end = self.shard(step, self.world - 1)
        return (lo if lo > first else end) - 1

    def sample_of(self, view: torch.Tensor) -> torch.Tensor:
        """The order position each view position (in [0, n)) shows."""
        if self.reps == 1:
            return view
        b = self.global_batch
        batch_step, offset = view // b, view % b
        size = (self.n - batch_step * b).clamp(max=b)  # this view's global batch: a short last one too
        per_copy = (size + self.reps - 1) // self.reps  # distinct samples in it
        return batch_step * (b // self.reps) + offset % per_copy


def check_batch(global_batch: int, world: int, accum: int, reps: int = 1) -> None:
    """The global batch divides into world x accum shards, and into reps copies (data.ra_reps)."""
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
    if global_batch % reps:
        step = math.lcm(reps, world * accum)
        lo = global_batch // step * step
        sizes = " or ".join(map(str, sorted({lo or step, lo + step})))
        divisors = [r for r in range(1, global_batch + 1) if global_batch % r == 0]
        near = [max((r for r in divisors if r < reps), default=None), min((r for r in divisors if r > reps), default=None)]
        near = [r for r in near if r is not None]
        raise ConfigError(f"data.ra_reps={reps} must divide train.batch_size={global_batch} (each global batch is "
                          f"batch_size/ra_reps samples, each ra_reps times): use data.ra_reps="
                          f"{' or '.join(map(str, near))}, or train.batch_size={sizes}")


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
