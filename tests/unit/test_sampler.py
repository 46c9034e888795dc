"""Sampler arithmetic: equal shards for training, exact coverage for evaluation."""
import math
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from common.data.classifier_data import TensorEvalLoader, TensorTrainLoader
from common.data.sampling import TrainPlan, epoch_order, eval_shard

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
