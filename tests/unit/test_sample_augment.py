"""The in-memory classifiers' torchvision augmentations (data.auto_augment, data.random_erase) and the one
MixUp/CutMix implementation (common/data/mixing.py): torchvision's ops with torchvision's parameters, the
same global batches at any world size, a resume repeats them, the global RNG untouched. On real
Fashion-MNIST (grey 28x28), where the policies' effects on one channel matter."""
from types import SimpleNamespace

import pytest
import torch
from torchvision.transforms import v2

from common.data import mixing
from common.data.classifier_data import TensorTrainLoader
from common.data.datasets import load_split
from common.data.policies import SampleAugment
from common.data.augment_config import AugmentConfig


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as a recipe run in a test has: the many small kernels do not fight over cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fashion():
    images, labels = load_split(SimpleNamespace(name="fashion_mnist", root="data", download=False), "test")
    return images[:600], labels[:600]


def data_cfg(**kw):
    return AugmentConfig(**kw)


ALL_ON = dict(auto_augment="ta_wide", random_erase=0.5, mixup_alpha=0.2, cutmix_alpha=1.0)


def loader(fashion, world, rank, accum=1, batch=64, augment=True, n=384, **keys):
    images, labels = fashion[0][:n], fashion[1][:n]
    d = data_cfg(**keys)
    return TensorTrainLoader(images, labels, [0.286], [0.353], global_batch=batch, world=world, rank=rank, accum=accum,
                             seed=7, augment=augment, mix=mixing.batch_mix(d, 10, 7),
                             sample_augment=SampleAugment(d, (1, 28, 28)) if SampleAugment.wanted(d) else None)


def global_batches(loaders, epoch=1, start=0):
    for ld in loaders:
        ld.set_epoch(epoch, start)
    out = []
    for steps in zip(*loaders):
        out.append((torch.cat([x for step in steps for x, _ in step]), torch.cat([y for step in steps for _, y in step])))
    return out


@pytest.mark.parametrize("keys", [ALL_ON, dict(ALL_ON, auto_augment="augmix", cutmix_alpha=0.0, n=160),
                                  dict(ALL_ON, auto_augment="autoaugment", mixup_alpha=0.0, cutmix_alpha=0.0)])
def test_the_same_global_batches_at_world_size_1_and_2(fashion, keys):
    one = global_batches([loader(fashion, 1, 0, **keys)])
    two = global_batches([loader(fashion, 2, r, accum=2, **keys) for r in range(2)])
    assert len(one) == len(two) == keys.get("n", 384) // 64
    for (x1, y1), (x2, y2) in zip(one, two):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # Everything was on: soft targets, and the images are not the plain crops.
    plain = global_batches([loader(fashion, 1, 0, n=keys.get("n", 384))])
    mixed = keys["mixup_alpha"] or keys["cutmix_alpha"]
    assert one[0][1].shape == ((64, 10) if mixed else (64,)) and not torch.equal(one[0][0], plain[0][0])


def test_a_resumed_epoch_repeats_the_augmented_batches(fashion):
    """Also when the policy runs over other chunks of steps (one pass per 2 steps here, not per epoch)."""
    full = global_batches([loader(fashion, 2, r, **ALL_ON) for r in range(2)])
    assert loader(fashion, 1, 0, **ALL_ON).chunk >= len(full)  # by default: one pass over the epoch
    resumed = [loader(fashion, 2, r, **ALL_ON) for r in range(2)]
    for ld in resumed:
        ld.chunk = 2
    later = global_batches(resumed, start=3)
    assert len(later) == len(full) - 3
    for (x1, y1), (x2, y2) in zip(full[3:], later):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_the_global_rng_is_untouched_and_epochs_differ(fashion):
    torch.manual_seed(3)
    before = torch.get_rng_state()
    a = global_batches([loader(fashion, 1, 0, **ALL_ON)], epoch=1)
    b = global_batches([loader(fashion, 1, 0, **ALL_ON)], epoch=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(a[0][0], b[0][0])


def test_with_everything_off_the_loader_is_the_plain_one(fashion):
    """The keys at their defaults build nothing: the fast path is the one the other tests pin down."""
    d = data_cfg()
    assert mixing.batch_mix(d, 10, 7) is None and not SampleAugment.wanted(d)


def _torchvision_draws(kind, policy, h, w):
    """The draws torchvision's forward makes from torch's RNG for one image, transcribed, as a SampleAugment row."""
    space = policy._AUGMENTATION_SPACE if kind != "autoaugment" else None
    if kind == "ta_wide":
        op = int(torch.randint(len(space), ()))
        fn, signed = space[list(space)[op]]
        b = int(torch.randint(policy.num_magnitude_bins, ())) if fn(31, h, w) is not None else 0
        return [op, b, int(bool(signed and fn(31, h, w) is not None and torch.rand(()) <= 0.5))]
    if kind == "randaugment":
        row = []
        for _ in range(policy.num_ops):
            op = int(torch.randint(len(space), ()))
            fn, signed = space[list(space)[op]]
            row += [op, int(bool(signed and fn(31, h, w) is not None and torch.rand(()) <= 0.5))]
        return row
    sub = int(torch.randint(len(policy._policies), ()))
    row = [sub]
    for op, p, _ in policy._policies[sub]:
        applied = bool(torch.rand(()) <= p)
        fn, signed = policy._AUGMENTATION_SPACE[op]
        row += [int(applied), int(bool(applied and signed and fn(10, h, w) is not None and torch.rand(()) <= 0.5))]
    return row


@pytest.mark.parametrize("kind", ["ta_wide", "randaugment", "autoaugment"])
def test_each_sample_gets_torchvisions_policy_with_the_same_draws(fashion, kind):
    """For the draws torchvision's forward makes under a seed, the grouped batch application gives, per
    sample, exactly torchvision's policy(image) under that seed: the same ops and magnitudes, in order."""
    x = fashion[0][:48]
    sa = SampleAugment(data_cfg(auto_augment=kind, randaugment_ops=3), (1, 28, 28))
    rows, expected = [], []
    with torch.random.fork_rng(devices=[]):
        for i in range(len(x)):
            torch.manual_seed(1000 + i)
            rows.append(_torchvision_draws(kind, sa.policy, 28, 28))
            torch.manual_seed(1000 + i)
            expected.append(sa.policy(x[i]))
    out = sa.apply_policy(x, {"ops": torch.tensor(rows)})
    assert torch.equal(out, torch.stack(expected))
    assert (out != x).flatten(1).any(1).sum() > len(x) // 3  # most samples changed: the ops ran


@pytest.mark.parametrize("kind", ["ta_wide", "randaugment", "autoaugment", "augmix"])
def test_policies_run_on_grey_images(fashion, kind):
    x = fashion[0][:32]
    sa = SampleAugment(data_cfg(auto_augment=kind), (1, 28, 28))
    out = sa.apply_policy(x, {k: v[:32] for k, v in sa.draw(600, torch.Generator().manual_seed(0)).items()})
    assert out.shape == x.shape and out.dtype == torch.uint8 and not torch.equal(out, x)


def test_random_erasing_is_torchvisions_on_the_drawn_samples(fashion):
    sa = SampleAugment(data_cfg(random_erase=0.5), (1, 28, 28))
    x = fashion[0][:40].float().div(255)
    params = sa.draw(40, torch.Generator().manual_seed(1))
    out = sa.apply_erase(x, params)
    erased = params["erase"]
    assert 0 < erased.sum() < 40 and torch.equal(out[~erased], x[~erased])
    eraser = v2.RandomErasing(p=0.5)  # the probability is drawn by position; the box as torchvision draws it
    for i in erased.nonzero().squeeze(1).tolist():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(params["erase_seeds"][i]))
            box = eraser.make_params([x[i]])
        assert torch.equal(out[i], eraser.transform(x[i], box)) and not torch.equal(out[i], x[i])


def test_mix_is_torchvisions_over_the_global_batch():
    """Every rank's shard, led by TrainPlan.lead's sample, mixes to that shard of torchvision's MixUp on the
    whole global batch under the step's seed."""
    from common.data.sampling import TrainPlan
    x, y = torch.randn(12, 1, 8, 8), torch.arange(12) % 10
    mix = mixing.batch_mix(data_cfg(mixup_alpha=0.4, cutmix_alpha=1.0), 10, seed=2)
    whole, soft = mix(torch.cat([x[-1:], x]), torch.cat([y[-1:], y]), 0, 5)
    plan = TrainPlan(24, 12, 3, True)  # step 0: positions 0..11 in shards of 4
    for rank in range(3):
        lo, hi = plan.shard(0, rank)
        lead = plan.lead(0, rank)
        part, part_soft = mix(x[[lead, *range(lo, hi)]], y[[lead, *range(lo, hi)]], 0, 5)
        assert torch.equal(part, whole[lo:hi]) and torch.equal(part_soft, soft[lo:hi])
    assert soft.shape == (12, 10) and torch.allclose(soft.sum(1), torch.ones(12))


def test_a_users_dataset_is_mixed_by_the_same_implementation():
    """dataset_data (a user's own Dataset) mixes on the device with mixing.BatchMix too, seeded per step."""
    from common.data.custom import dataset_data
    from common.tasks.classifier import ClassifierConfig

    class Squares(torch.utils.data.Dataset):
        classes = ["a", "b", "c"]

        def __len__(self):
            return 24

        def __getitem__(self, i):
            return torch.full((1, 4, 4), float(i)), i % 3

    cfg = ClassifierConfig()
    cfg.data.mixup_alpha, cfg.train.batch_size = 0.4, 8
    rt = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"), memory_format=torch.contiguous_format)
    train = dataset_data(lambda cfg, split: Squares(), workers=0)(cfg, rt).train
    assert type(train.mix) is mixing.BatchMix
    train.set_epoch(0)
    first = [torch.cat([y for _, y in step]) for step in train]
    train.set_epoch(0)
    assert first[0].shape == (8, 3) and all(torch.equal(a, torch.cat([y for _, y in b])) for a, b in zip(first, train))
