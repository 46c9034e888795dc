"""Sampler arithmetic: equal shards for training, exact coverage for evaluation."""
import math
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from common.config import ConfigError
from common.data.classifier_data import TensorEvalLoader, TensorTrainLoader
from common.data.sampling import TrainPlan, check_batch, epoch_order, eval_shard
from common.data.streaming import EpochBatches

CASES = [(10_000, 3, 96), (10_000, 4, 128), (60_000, 8, 256), (1_000, 3, 30), (97, 2, 8), (50, 5, 50)]


@pytest.mark.parametrize("n,world,batch", CASES)
@pytest.mark.parametrize("drop_last", [True, False])
def test_train_shards_are_equal_and_cover_the_epoch(n, world, batch, drop_last):
    plan = TrainPlan(n, batch, world, drop_last)
    seen = Counter()
    for step in range(plan.steps):
        sizes = set()
        for r in range(world):
            lo, hi = plan.shard(step, r)
            sizes.add(hi - lo)
            seen.update(p % n for p in range(lo, hi))
        assert len(sizes) == 1, f"step {step}: ranks get different batch sizes {sizes}"
        if step < n // batch:
            assert sizes == {batch // world}
    used = sum(seen.values())
    assert used == n - plan.dropped + plan.padded
    if drop_last:
        assert plan.steps == n // batch and plan.dropped == n % batch and plan.padded == 0
        assert len(seen) == n - n % batch and max(seen.values()) == 1
    else:
        assert plan.steps == math.ceil(n / batch) and len(seen) == n  # every sample, some twice


def test_readme_worked_example():
    """10,000 samples, 3 ranks, global batch 96 (32 per rank): the numbers in the README."""
    keep = TrainPlan(10_000, 96, 3, drop_last=True)
    assert (keep.steps, keep.dropped, keep.padded) == (104, 16, 0)
    pad = TrainPlan(10_000, 96, 3, drop_last=False)
    assert (pad.steps, pad.padded) == (105, 2)
    assert [pad.shard(104, r)[1] - pad.shard(104, r)[0] for r in range(3)] == [6, 6, 6]
    # Same per-rank counts as torch's DistributedSampler(drop_last=False) + DataLoader(batch_size=32).
    sampler = DistributedSampler(range(10_000), num_replicas=3, rank=0, shuffle=False)
    sizes = [len(b) for b in DataLoader(range(10_000), batch_size=32, sampler=sampler)]
    assert len(sizes) == 105 and sizes[-1] == 6


@pytest.mark.parametrize("n,world", [(10_000, 3), (255, 2), (7, 4), (3, 5)])
def test_eval_shards_count_every_sample_once(n, world):
    shards = [eval_shard(n, world, r) for r in range(world)]
    allidx = torch.cat(shards)
    assert len(allidx) == n and torch.equal(allidx.sort().values, torch.arange(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_order_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_order(100, 0, 1), epoch_order(100, 0, 1))
    assert not torch.equal(epoch_order(100, 0, 1), epoch_order(100, 0, 2))
    assert not torch.equal(epoch_order(100, 0, 1), epoch_order(100, 1, 1))


def _loader(world, rank, batch=12, accum=1, **kw):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (50, 1, 6, 6), dtype=torch.uint8, generator=g)
    labels = torch.arange(50)
    return TensorTrainLoader(images, labels, [0.5], [0.25], global_batch=batch, world=world, rank=rank,
                             accum=accum, seed=3, **kw)


@pytest.mark.parametrize("augment", [False, True])
def test_global_batches_do_not_depend_on_world_size(augment):
    one = _loader(1, 0, augment=augment)
    one.set_epoch(2)
    two = [_loader(2, r, augment=augment) for r in range(2)]
    for ld in two:
        ld.set_epoch(2)
    for step_one, *steps_two in zip(one, *two):
        x1, y1 = step_one[0]
        x2 = torch.cat([s[0][0] for s in steps_two])
        y2 = torch.cat([s[0][1] for s in steps_two])
        assert torch.equal(y1, y2) and torch.equal(x1, x2)


def test_resume_skips_by_index():
    full = _loader(1, 0, augment=True)
    full.set_epoch(1)
    batches = list(full)
    later = _loader(1, 0, augment=True)
    later.set_epoch(1, start_step=2)
    assert len(later) == len(batches) - 2
    for a, b in zip(batches[2:], later):
        assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][1], b[0][1])


def test_grad_accum_splits_each_step_into_micro_batches():
    ld = _loader(2, 1, batch=12, accum=3)
    step = next(iter(ld))
    assert [len(y) for _, y in step] == [2, 2, 2]


def test_eval_loader_total_and_batches():
    images = torch.zeros(11, 1, 2, 2, dtype=torch.uint8)
    loaders = [TensorEvalLoader(images, torch.arange(11), [0.], [1.], batch_size=4, world=3, rank=r) for r in range(3)]
    ys = torch.cat([y for ld in loaders for _, y in ld])
    assert all(ld.total == 11 for ld in loaders) and torch.equal(ys.sort().values, torch.arange(11))


# ----------------------------------------------------------------------------- repeated augmentation (data.ra_reps)

def _epoch_views(plan):
    """{step: [(rank, order position, view position), ...]} over one epoch."""
    out = {}
    for step in range(plan.steps):
        for r in range(plan.world):
            samples, views = plan.views(step, r)
            out.setdefault(step, []).extend((r, s, v) for s, v in zip(samples.tolist(), views.tolist()))
    return out


RA_CASES = [(1_000, 4, 96, 3), (1_000, 3, 96, 3), (1_000, 8, 96, 4), (1_000, 5, 60, 3), (97, 4, 12, 2), (500, 2, 48, 3)]


@pytest.mark.parametrize("n,world,batch,reps", RA_CASES)
@pytest.mark.parametrize("drop_last", [True, False])
def test_each_sample_of_an_epoch_appears_ra_reps_times_with_its_own_view(n, world, batch, reps, drop_last):
    plan = TrainPlan(n, batch, world, drop_last, reps)
    assert plan.steps == TrainPlan(n, batch, world, drop_last).steps  # an epoch keeps its length in steps
    rows = [(step, s, v) for step, shard in _epoch_views(plan).items() for _, s, v in shard]
    real = [(s, v) for step, s, v in rows if v >= step * batch]  # not the padding (the epoch's first views again)
    assert len(rows) == len(real) + plan.padded
    # Each view position (what a sample's augmentation is drawn by) is used once: no two copies share a draw.
    assert len(real) == n - plan.dropped and len({v for _, v in real}) == len(real)
    # The epoch's first `distinct` order positions, each ra_reps times (a short last batch: its own share).
    per_sample = Counter(s for s, _ in real)
    assert sorted(per_sample) == list(range(plan.distinct))
    full = n // batch
    assert plan.distinct == full * batch // reps + (0 if drop_last else math.ceil(n % batch / reps))
    assert all(per_sample[s] == reps for s in range(full * batch // reps))
    assert all(1 <= c <= reps for c in per_sample.values())


@pytest.mark.parametrize("n,world,batch,reps", RA_CASES + [(1_000, 2, 96, 3), (1_000, 1, 96, 4), (1_000, 3, 96, 4)])
def test_the_copies_of_a_sample_land_on_different_ranks(n, world, batch, reps):
    """With world >= ra_reps every copy of a sample is on its own rank (any world size, divisible or not);
    with fewer ranks they share them as evenly as possible (one process: all on it, as torchvision's)."""
    plan = TrainPlan(n, batch, world, False, reps)
    for step, rows in _epoch_views(plan).items():
        ranks_of = {}
        for r, s, v in rows:
            if v >= step * batch:  # not the padding of a short last batch (the epoch's first views again)
                ranks_of.setdefault(s, []).append(r)
        for s, ranks in ranks_of.items():
            if world >= reps:
                assert len(set(ranks)) == len(ranks), f"step {step}: sample {s} twice on a rank {ranks}"
            else:
                assert max(Counter(ranks).values()) <= math.ceil(reps / world)


def test_ra_reps_worked_example():
    """docs/data.md: 10,000 samples, 4 ranks, train.batch_size=96, data.ra_reps=3."""
    plan = TrainPlan(10_000, 96, 4, True, reps=3)
    assert (plan.steps, plan.distinct, plan.per_rank) == (104, 3_328, 24)
    samples, _ = zip(*(plan.views(0, r) for r in range(4)))
    batch = torch.cat(samples)
    assert torch.equal(batch, torch.arange(32).repeat(3))  # [s0..s31 | s0..s31 | s0..s31]
    assert [s[:2].tolist() for s in samples] == [[0, 1], [24, 25], [16, 17], [8, 9]]


def _ra_loader(world, rank, batch=12, reps=3, **kw):
    return _loader(world, rank, batch=batch, ra_reps=reps, augment=True, **kw)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ra_global_batches_do_not_depend_on_world_size(world):
    one = _ra_loader(1, 0)
    one.set_epoch(2)
    many = [_ra_loader(world, r) for r in range(world)]
    for ld in many:
        ld.set_epoch(2)
    for step_one, *steps in zip(one, *many, strict=True):
        assert torch.equal(step_one[0][1], torch.cat([s[0][1] for s in steps]))
        assert torch.equal(step_one[0][0], torch.cat([s[0][0] for s in steps]))


def test_ra_copies_get_different_augmentations():
    ld = _ra_loader(1, 0, batch=48)
    differ = total = 0
    for (x, y), in ld:
        assert torch.equal(y[:16].repeat(3), y)  # the labels are the sample ids: each sample 3 times
        copies = x.view(3, 16, *x.shape[1:])
        for a, b in ((0, 1), (0, 2), (1, 2)):
            differ += sum(not torch.equal(copies[a, i], copies[b, i]) for i in range(16))
            total += 16
    # 162 crop-and-flip outcomes per copy: a handful of pairs draw the same one; most differ.
    assert differ > 0.9 * total


def test_ra_resume_skips_by_index():
    full = _ra_loader(2, 1)
    full.set_epoch(1)
    batches = list(full)
    later = _ra_loader(2, 1)
    later.set_epoch(1, start_step=3)
    assert len(later) == len(batches) - 3
    for a, b in zip(batches[3:], later, strict=True):
        assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][1], b[0][1])


def test_ra_streaming_sampler_picks_what_the_in_memory_loader_picks():
    """One implementation: the folder loaders' sampler shows the same samples, with draws by view position."""
    plan = TrainPlan(50, 12, 2, True, reps=3)
    draws = list(range(1000, 1050))  # a distinct draw per view position
    sampler = EpochBatches(plan, 1, seed=3, draw=lambda n, g: draws[:n])
    sampler.set_epoch(2)
    memory = _ra_loader(2, 1)
    memory.set_epoch(2)
    for items, ((_, y),) in zip(sampler, memory, strict=True):
        assert [i for i, _ in items] == y.tolist()
        by_sample = {}
        for i, d in items:
            by_sample.setdefault(i, []).append(d)
        assert all(len(set(d)) == len(d) for d in by_sample.values())  # each copy its own draw


@pytest.mark.parametrize("batch,world,accum,reps,fix", [
    (128, 2, 1, 3, "use data.ra_reps=2 or 4, or train.batch_size=126 or 132"),
    (96, 4, 2, 5, "use data.ra_reps=4 or 6, or train.batch_size=80 or 120"),
    (8, 1, 1, 9, "use data.ra_reps=8, or train.batch_size=9"),
])
def test_ra_reps_that_do_not_divide_the_batch_are_refused_with_the_nearest_values(batch, world, accum, reps, fix):
    with pytest.raises(ConfigError, match=f"data.ra_reps={reps} must divide train.batch_size={batch}") as e:
        check_batch(batch, world, accum, reps)
    assert fix in str(e.value)
    check_batch(batch, world, accum, 4 if batch % 4 == 0 else 1)  # a divisor passes
