"""common/data/folder.py, the one disk loader, in both uses: imagenet's classification presets
(imagefolder_data) and the GANs' square / AB-pair crops (folder_data) on tiny generated trees."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch

from common.data.folder import FolderDataConfig, folder_data, imagefolder_data
from common.data.datasets import DataError
from support.images import image_tree


class Rank:
    """What the loaders read from a Runtime, for one rank of a world we do not start."""

    def __init__(self, rank=0, world=1):
        self.rank, self.world_size, self.is_main = rank, world, True  # every stub lists the tree itself
        self.device, self.memory_format = torch.device("cpu"), torch.contiguous_format


def config(root, batch=8, accum=1, **data):
    d = dict(dataclasses.asdict(FolderDataConfig()), name="imagefolder", root=str(root), image_size=16, workers=0, drop_last=True, augment=True, direction="AtoB")
    d.update(data)
    return SimpleNamespace(seed=5, data=SimpleNamespace(**d),
                           train=SimpleNamespace(batch_size=batch, grad_accum=accum, eval_batch_size=6))


def noisy(value, size=(20, 14)):
    """Pixels whose mean is about 30 + value (noise within +-20, no clipping for value <= 200): the file's
    id survives crops and resizing."""
    g = torch.Generator().manual_seed(value)
    noise = torch.randint(-20, 21, (size[1], size[0], 3), generator=g)
    return (noise + 30 + value).clamp(0, 255).to(torch.uint8)


@pytest.fixture
def imagenet_tree(tmp_path):
    return image_tree(tmp_path, {"train": 21, "val": 10}, lambda split, i: noisy(10 * i, size=(18 + i, 14 + i % 5)),
                      classes=3, ext="jpg", name="{:02d}")


@pytest.fixture
def gan_tree(tmp_path):  # 24x12 files: 12x12 A | B halves
    return image_tree(tmp_path, {"train": 21, "val": 10}, lambda split, i: noisy(10 * i, size=(24, 12)), name="{:02d}")


def build(use, root, rank=0, world=1, **kw):
    cfg = config(root, **kw)
    rt = Rank(rank, world)
    if use == "classification":
        return imagefolder_data(cfg, rt)
    return folder_data(cfg, rt, size=8, pairs=use == "gan_pairs")


def epoch(loader, e=1, start=0):
    loader.set_epoch(e, start)
    return [(torch.cat([x for x, _ in step]), torch.cat([y for _, y in step])) for step in loader]


TREES = {"classification": "imagenet_tree", "gan_pairs": "gan_tree", "gan_images": "gan_tree"}


@pytest.fixture(params=list(TREES))
def use_root(request):
    return request.param, request.getfixturevalue(TREES[request.param])


def test_workers_0_leaves_the_global_rng_untouched(use_root):
    use, root = use_root
    loaders = build(use, root, workers=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    steps = epoch(loaders.train) + epoch(loaders.train, e=2)
    evals = list(loaders.eval)
    assert torch.equal(torch.get_rng_state(), before)
    assert len(steps) == 2 * (21 // 8) and sum(len(x) for x, _ in evals) == 10
    # The augmentation is random (not switched off): epochs 1 and 2 differ on the same files.
    assert not torch.equal(steps[0][0], steps[2][0])


@pytest.mark.parametrize("use", ["classification", "gan_pairs"])
def test_the_same_batches_with_0_and_2_workers(use, request):
    root = request.getfixturevalue(TREES[use])
    a, b = build(use, root, workers=0, accum=2), build(use, root, workers=2, accum=2)
    for e in (0, 3):
        got_a, got_b = epoch(a.train, e), epoch(b.train, e)
        assert len(got_a) == len(got_b) == 21 // 8
        for (xa, ya), (xb, yb) in zip(got_a, got_b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(a.eval, b.eval, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_set_epoch_with_a_start_step_is_the_tail_of_the_epoch(use_root):
    use, root = use_root
    for world in (1, 2):
        for rank in range(world):
            train = build(use, root, rank=rank, world=world, batch=4, drop_last=False).train
            full = epoch(train, 2)
            assert len(full) == 6  # 21 images, batch 4, last short batch kept (padded to equal shards)
            for k in (1, 4, 5):
                tail = epoch(train, 2, k)
                assert len(tail) == len(full) - k == len(train)
                assert all(torch.equal(x, fx) and torch.equal(y, fy) for (x, y), (fx, fy) in zip(tail, full[k:]))


@pytest.mark.parametrize("use", ["classification", "gan_pairs"])
def test_eval_covers_every_file_exactly_once_across_ranks(use, request):
    root = request.getfixturevalue(TREES[use])
    for world in (1, 3, 4):
        seen, rows, ids = [], 0, []
        for rank in range(world):
            ev = build(use, root, rank=rank, world=world, batch=12).eval
            assert ev.total == 10
            seen += [i for batch in ev.batches for i, _ in batch]
            for x, _ in ev:
                rows += len(x)
                ids += file_ids(x)
        assert sorted(seen) == list(range(10)) and rows == 10
        if use == "gan_pairs":  # the decoded pixels, not just the indices, are each file once
            assert sorted(ids) == list(range(10))


def file_ids(x):
    """File i is filled with 30 + 10 i (plus zero-mean noise): its id from a GAN batch in [-1, 1]."""
    return (((x[:, :3].mean((1, 2, 3)) + 1) * 127.5 - 30) / 10).round().long().tolist()


def _truncated(path):
    from PIL import Image
    Image.fromarray(noisy(100, size=(64, 64)).numpy()).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


@pytest.mark.parametrize("broken", ["truncated", "empty", "not_an_image"])
@pytest.mark.parametrize("use", ["classification", "gan_images"])
def test_an_unreadable_file_is_a_data_error_naming_it(use, broken, request):
    root = request.getfixturevalue(TREES[use])
    bad = root / "train" / "c1" / ("zz.jpg" if use == "classification" else "zz.png")
    {"truncated": _truncated, "empty": lambda p: p.write_bytes(b""),
     "not_an_image": lambda p: p.write_text("<html>not found</html>")}[broken](bad)
    train = build(use, root, workers=0, batch=22, drop_last=False).train  # one step: every file
    with pytest.raises(DataError, match=r"cannot read image .*c1/zz\.(jpg|png).*delete or replace"):
        epoch(train)


def test_a_worker_process_reports_the_unreadable_file_too(gan_tree):
    (gan_tree / "train" / "c0" / "zz.png").write_bytes(b"")
    train = build("gan_images", gan_tree, workers=1, batch=22, drop_last=False).train
    with pytest.raises(DataError, match=r"cannot read image .*c0/zz\.png"):
        epoch(train)


@pytest.mark.parametrize("auto_augment", ["ta_wide", "augmix"])
def test_policies_and_erasing_give_the_same_global_batches_at_world_size_1_and_2(imagenet_tree, auto_augment):
    """Per-sample seeds from the sampler: rank 0 and rank 1 of a world of 2 together see the batch one process
    sees, augmentation and erasing boxes included, from the start and from a mid-epoch step."""
    kw = dict(auto_augment=auto_augment, random_erase=0.5, batch=8)
    one = build("classification", imagenet_tree, **kw).train
    ranks = [build("classification", imagenet_tree, rank=r, world=2, **kw).train for r in (0, 1)]
    for start in (0, 1):
        whole, halves = epoch(one, 2, start), [epoch(r, 2, start) for r in ranks]
        assert len(whole) == 21 // 8 - start
        for (x, y), (x0, y0), (x1, y1) in zip(whole, *halves, strict=True):
            assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    assert any((x == 0).all(1).any() for x, _ in whole)  # some boxes were erased (p=0.5)
    assert not torch.equal(epoch(one, 2)[0][0], epoch(one, 3)[0][0])  # augmented afresh each epoch
