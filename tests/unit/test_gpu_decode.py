"""data.decode=gpu (common/data/gpu_decode.py): the workers send JPEG bytes and the device decodes, crops,
resizes, flips and normalises. Its device half takes a device, so here it runs on the CPU
(torchvision.io.decode_jpeg decodes lists there too) against data.decode=pil: the same crops, flips and
erasing boxes for the same seeds, and pixels within a bound that a wrong crop, flip or normalisation breaks.
The tests marked cuda run the same on a GPU (nvJPEG) and skip without one.
"""
import dataclasses
import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from common.config import ConfigError
from common.data.files import DataError
from common.data.folder import DECODERS, FolderDataConfig, imagefolder_data
from common.data.gpu_decode import GpuDecode, JpegBatch, jpeg_size, require_cuda
from common.data.transforms import IMAGENET_STD, Preset
from support.images import image_tree
from support.inprocess import run_inprocess
from support.runs import run_recipe

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
LEVELS = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255  # a normalised difference times this: uint8 levels
# CPU decode_jpeg and Pillow share libjpeg-turbo; the resize differs in arithmetic (float here, as on CUDA;
# Pillow's fixed point). Measured on these JPEGs: at most 1 level, mean 0.14-0.18 levels (train and eval,
# both interpolations). A crop mirrored or shifted by one pixel is off by 80 and 3.4 levels on average.
MAX_LEVELS, MEAN_LEVELS = 3, 0.3


def data(**kw):
    d = dict(image_size=176, train_crop=0, val_resize=0, val_crop=0, interpolation="bilinear", auto_augment="none",
             randaugment_magnitude=9, randaugment_ops=2, augmix_severity=3, random_erase=0.0, decode="gpu")
    return SimpleNamespace(**{**d, **kw})


def encode(pixels: np.ndarray, fmt="JPEG") -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def jpegs():
    """ImageNet-like JPEG bytes (quality 90): 500x375, 375x500 and a small 120x90, textured colour fields."""
    rng = np.random.default_rng(0)
    out = []
    for k, (w, h) in enumerate([(500, 375), (375, 500), (120, 90)]):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = 127 + 100 * np.sin(0.013 * (k + 1) * xx + 0.021 * yy + k)
        img = np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 12, (h, w, 3))
        out.append(encode(np.clip(img, 0, 255).astype(np.uint8)))
    return out


def both(d, train, files, seeds, device="cpu"):
    """The same samples through data.decode=pil (worker + on_device, one at a time) and data.decode=gpu (the
    worker's load, collate, then the batch's on_device on `device`)."""
    pil, gpu = Preset(d, train), GpuDecode(d, train)
    want = torch.stack([pil.on_device(default_collate([pil.load(f, f"f{k}", s)]))[0] for k, (f, s) in
                        enumerate(zip(files, seeds))])
    batch, labels = gpu.collate([(gpu.load(f, f"f{k}", s), k) for k, (f, s) in enumerate(zip(files, seeds))])
    assert labels.tolist() == list(range(len(files))) and batch.where == [f"f{k}" for k in range(len(files))]
    return pil, gpu, batch, want, gpu.on_device(batch.to(device)).cpu()


def levels(a, b):
    d = (a - b).abs() * LEVELS
    return float(d.max()), float(d.mean())


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_train_draws_the_pil_crops_flips_and_erasing_and_the_pixels_agree(jpegs, interpolation):
    files = [jpegs[k % 3] for k in range(12)]
    seeds = [7919 * k + 2 ** 61 for k in range(12)]  # as Seeded.draw makes them
    pil, gpu, batch, want, got = both(data(interpolation=interpolation, random_erase=0.5), True, files, seeds)
    assert got.shape == want.shape == (12, 3, 176, 176) and got.dtype == torch.float32 and gpu.size == 176
    assert isinstance(batch, JpegBatch) and [f.numpy().tobytes() for f in batch.files()] == files  # bytes as read
    # The erasing box drawn in the worker is the preset's, for the same seed (it follows the crop's draws).
    boxes = [pil.load(f, "f", s)[1].tolist() for f, s in zip(files, seeds)]
    assert batch.params[:, 5:].tolist() == boxes and any(b[2] > 0 for b in boxes) and any(b[2] == 0 for b in boxes)
    assert batch.params[:, 4].unique().tolist() == [0, 1]  # both flips occur: the comparison covers them
    worst, mean = levels(got, want)
    assert worst <= MAX_LEVELS and mean <= MEAN_LEVELS, (worst, mean)
    # The bound tells a wrong flip or crop apart: the mirrored batch, or one shifted by a pixel, is far off.
    flipped = batch.params[:, 4].bool()
    assert levels(got[flipped].flip(-1), want[flipped])[1] > 5 * MEAN_LEVELS
    assert levels(got[..., 1:], want[..., :-1])[1] > 5 * MEAN_LEVELS


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_eval_is_the_pil_resize_and_centre_crop(jpegs, interpolation):
    d = data(interpolation=interpolation, val_resize=232, val_crop=224, train_crop=176)
    pil, gpu, batch, want, got = both(d, False, jpegs, [None] * 3)
    assert batch.params is None and got.shape == want.shape == (3, 3, 224, 224) and gpu.size == 224
    assert gpu.spec() == pil.spec()  # --export records the same resize, crop and interpolation
    worst, mean = levels(got, want)
    assert worst <= MAX_LEVELS and mean <= MEAN_LEVELS, (worst, mean)


def test_the_worker_reads_the_header_only_and_names_a_bad_file(jpegs):
    gpu = GpuDecode(data(), True)
    assert jpeg_size(jpegs[0], "a.jpg") == (375, 500)
    data_, params, where = gpu.load(jpegs[0][:2000], "a/truncated.jpg", 5)  # the header parses: the size is known
    assert data_.dtype == torch.uint8 and len(data_) == 2000 and params.shape == (9,) and where == "a/truncated.jpg"
    png = encode(np.zeros((8, 8, 3), np.uint8), "PNG")
    with pytest.raises(DataError, match=r"^a/b.png is a PNG image, and data.decode=gpu decodes JPEGs only.*data.decode=pil"):
        gpu.load(png, "a/b.png", 5)
    with pytest.raises(DataError, match=r"^cannot read image a/c.jpg \(UnidentifiedImageError.*delete or replace the file"):
        gpu.load(b"not an image at all", "a/c.jpg", 5)


def test_a_file_whose_data_does_not_decode_is_named(jpegs):
    gpu = GpuDecode(data(), True)
    names = ["x/good0.jpg", "x/bad.jpg", "x/good1.jpg"]
    items = [gpu.load(f, n, s) for f, n, s in zip([jpegs[0], jpegs[1][:2000], jpegs[2]], names, [1, 2, 3])]
    batch, _ = gpu.collate([(item, 0) for item in items])
    with pytest.raises(DataError, match=r"^cannot decode image x/bad.jpg \(Image is incomplete or truncated\); "
                                        "delete or replace the file$"):
        gpu.on_device(batch.to("cpu"))


def test_auto_augment_is_refused_and_a_device_other_than_cuda_too():
    for policy in ("ta_wide", "augmix"):
        with pytest.raises(ConfigError, match=f"data.auto_augment={policy} runs on decoded images in the workers.*"
                                              "set data.auto_augment=none, or data.decode=pil"):
            GpuDecode(data(auto_augment=policy), True)
    GpuDecode(data(auto_augment="ta_wide"), False)  # evaluation applies no policy
    with pytest.raises(ConfigError, match="data.decode=gpu decodes JPEGs with nvJPEG on a CUDA GPU, and this run's "
                                          "device is cpu: run on a CUDA GPU, or set data.decode=pil"):
        require_cuda(data(), torch.device("cpu"))
    require_cuda(data(decode="pil"), torch.device("cpu"))
    require_cuda(data(), torch.device("cuda", 0))
    require_cuda(SimpleNamespace(), torch.device("cpu"))  # a recipe without data.decode


def test_without_cuda_the_recipe_exits_2_before_reading_data(tmp_path):
    """device=cpu stands for a machine without CUDA (device=auto picks the CPU there): one line, no traceback."""
    missing = tmp_path / "absent"  # never listed: the refusal comes first
    p = run_recipe("imagenet", "data.decode=gpu", f"data.root={missing}", f"out_dir={tmp_path / 'run'}", check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip().splitlines() == ["config error: data.decode=gpu decodes JPEGs with nvJPEG on a CUDA GPU, "
                                             "and this run's device is cpu: run on a CUDA GPU, or set data.decode=pil"]
    dry = run_inprocess("imagenet", "data.decode=gpu", "--dry-run", check=False)
    assert dry.returncode == 2 and "data.decode=gpu decodes JPEGs with nvJPEG on a CUDA GPU" in dry.stderr
    assert "resolved config" not in dry.stdout


class Rank:
    """What the loaders read from a Runtime, for one rank of a world we do not start."""

    def __init__(self, rank=0, world=1):
        self.rank, self.world_size, self.is_main = rank, world, True
        self.device, self.memory_format = torch.device("cpu"), torch.contiguous_format


def noisy(i: int) -> np.ndarray:
    """A small JPEG's pixels whose level tells the file apart after crops and resizing."""
    g = np.random.default_rng(i)
    return np.clip(30 + 10 * i + g.integers(-20, 21, (14 + i % 5, 18 + i, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return image_tree(tmp_path_factory.mktemp("tree"), {"train": 21, "val": 10}, lambda split, i: noisy(i),
                      classes=3, ext="jpg", name="{:02d}")


def loaders(root, decode, workers=0, rank=0, world=1, name="imagefolder"):
    """imagefolder_data's loaders for data.decode=`decode` (the library decodes on any device: the commands
    refuse a device other than CUDA, common/entry.py)."""
    d = dict(dataclasses.asdict(FolderDataConfig()), root=str(root), image_size=16, random_erase=0.3, workers=workers,
             decode=decode, name=name)
    cfg = SimpleNamespace(seed=5, data=SimpleNamespace(**d),
                          train=SimpleNamespace(batch_size=8, grad_accum=2, eval_batch_size=6))
    loaders = imagefolder_data(cfg, Rank(rank, world))
    assert isinstance(loaders.train.ds.transform, DECODERS[decode])
    return loaders.train, loaders.eval


def epoch(loader, e=1, start=0):
    loader.set_epoch(e, start)
    return [(torch.cat([x for x, _ in step]), torch.cat([y for _, y in step])) for step in loader]


def test_the_folder_loaders_give_pils_batches_whatever_the_workers_world_size_or_resume(tree):
    """Through the real loaders (sampler seeds, collate, spawned workers): data.decode=gpu's batches are
    data.decode=pil's within the pixel bound, the same with 0 workers and a spawned one, on 2 ranks and from a mid-epoch step."""
    (train, val), (pil_train, pil_val) = loaders(tree, "gpu"), loaders(tree, "pil")
    steps, pil_steps = epoch(train), epoch(pil_train)
    assert len(steps) == 21 // 8
    for (x, y), (px, py) in zip(steps, pil_steps):
        assert torch.equal(y, py) and x.shape == px.shape == (8, 3, 16, 16)
        worst, mean = levels(x, px)
        assert worst <= MAX_LEVELS and mean <= MEAN_LEVELS, (worst, mean)
    evals, pil_evals = list(val), list(pil_val)
    assert sum(len(y) for _, y in evals) == 10 and all(torch.equal(y, py) for (_, y), (_, py) in zip(evals, pil_evals))
    assert max(levels(x, px)[0] for (x, _), (px, _) in zip(evals, pil_evals)) <= MAX_LEVELS
    assert torch.equal(val.head(4), torch.cat([x for x, _ in evals])[:4])
    spawned = epoch(loaders(tree, "gpu", workers=1)[0])  # a spawned worker: bytes, params and names pickled
    assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(steps, spawned))
    halves = [epoch(loaders(tree, "gpu", rank=r, world=2)[0]) for r in (0, 1)]
    for (x, y), h0, h1 in zip(steps, *halves):
        assert torch.equal(x, torch.cat([h0[0], h1[0]])) and torch.equal(y, torch.cat([h0[1], h1[1]]))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(steps[1:], epoch(train, start=1)))


@pytest.mark.gpu
@cuda
def test_nvjpeg_decodes_what_the_cpu_path_decodes(jpegs):
    """nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's: a looser bound on the mean than the CPU's,
    still far below what a wrong crop or flip gives (checked alongside)."""
    files = [jpegs[k % 3] for k in range(12)]
    seeds = [7919 * k + 2 ** 61 for k in range(12)]
    _, _, batch, want, got = both(data(random_erase=0.5), True, files, seeds, device="cuda")
    pinned = batch.pin_memory()  # as the DataLoader's pinning thread does: the same bytes, pinned
    assert pinned.data.is_pinned() and [f.numpy().tobytes() for f in pinned.files()] == files
    worst, mean = levels(got, want)
    assert mean <= 1.0, (worst, mean)
    assert levels(got[batch.params[:, 4].bool()].flip(-1), want[batch.params[:, 4].bool()])[1] > 5.0
    _, _, _, want, got = both(data(), False, jpegs, [None] * 3, device="cuda")
    assert levels(got, want)[1] <= 1.0
    bad, _ = GpuDecode(data(), True).collate([(GpuDecode(data(), True).load(f, n, 1), 0) for f, n in
                                               [(jpegs[0], "ok.jpg"), (jpegs[1][:2000], "cut.jpg")]])
    with pytest.raises(DataError, match=r"^cannot decode image cut.jpg"):
        GpuDecode(data(), True).on_device(bad.to("cuda"))


@pytest.mark.gpu
@cuda
def test_imagenet_trains_and_evaluates_with_gpu_decoding(tmp_path):
    """imagenet_debug.yaml's generated JPEG tree, decoded by nvJPEG: trains, evaluates every val image."""
    run = run_inprocess("imagenet", "device=cuda", "data.decode=gpu", f"data.root={tmp_path / 'tree'}",
                        f"out_dir={tmp_path / 'run'}")
    assert run.returncode == 0 and 0 <= run.result["acc1"] <= 100, run.result


@pytest.mark.parametrize("decode", ["pil", "fast", "gpu"])
def test_every_decoder_reads_shards_as_it_reads_the_folder(tree, tmp_path, decode):
    """data.name (where the bytes come from) and data.decode (how they become pixels) are independent: the
    packed tree's batches are the folder's, bit for bit, for each decoder."""
    from common.data.pack import pack
    pack(tree, tmp_path / "packed", shard_size=2000)  # several shards: samples are read across them
    folder, shards = loaders(tree, decode), loaders(tmp_path / "packed", decode, name="shards")
    assert type(shards[0].ds).__name__ == "ShardFiles" and len(shards[0].ds.shards) > 2
    for (x, y), (sx, sy) in zip(epoch(folder[0]), epoch(shards[0]), strict=True):
        assert torch.equal(x, sx) and torch.equal(y, sy)
    assert all(torch.equal(x, sx) and torch.equal(y, sy) for (x, y), (sx, sy) in zip(folder[1], shards[1], strict=True))
