"""data.decode=fast (common/data/fast_jpeg.py) against data.decode=pil (transforms.Preset, torchvision's presets):
the same crops, flips, policies and erasing for the same seeds, pixels within stated bounds, the crop statistics
of torchvision's RandomResizedCrop, and the PIL path for every file that is not a plain YCbCr JPEG."""
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torchvision import transforms as v1

from common.data.datasets import DataError
from common.data.fast_jpeg import FastJpeg, reduction
from common.data.folder import image_transform
from common.data.transforms import Preset, draw_crop


def data(**kw):
    d = dict(image_size=64, train_crop=0, val_resize=0, val_crop=0, interpolation="bilinear", auto_augment="none",
             randaugment_magnitude=9, randaugment_ops=2, augmix_severity=3, random_erase=0.0, decode="fast")
    return SimpleNamespace(**{**d, **kw})


def encode(w, h, k=0, mode="RGB", fmt="JPEG") -> bytes:
    """A textured colour field (ImageNet-like compressibility), as file bytes; quality 90."""
    from PIL import Image
    rng = np.random.default_rng(k)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 127 + 100 * np.sin(0.013 * (k + 1) * xx + 0.021 * yy + k)
    img = np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 12, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert(mode).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpegs():
    """Under 128 pixels: a 64-pixel crop of them is never decoded reduced. 40x30 is upsampled."""
    return [encode(120, 90, 0), encode(90, 120, 1), encode(127, 95, 2), encode(40, 30, 3)]


SEEDS = [7919 * s + 2 ** 61 for s in range(12)]  # as Seeded.draw makes them: up to 2**62


def pair(d, train, accurate=False):
    fast = FastJpeg(d, train)
    if accurate:
        fast.train_flags = {}  # libjpeg-turbo's accurate IDCT and upsampling: PIL's decode, bit for bit
    return Preset(d, train), fast


def split(x):
    return x if isinstance(x, tuple) else (x, None)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("auto_augment", ["none", "ta_wide"])
def test_train_is_the_pil_path_to_within_the_resize_rounding(jpegs, interpolation, auto_augment):
    """Full-size decodes with the accurate IDCT: the same boxes, flips, policy ops and erasing boxes as the
    preset; pixels differ by torch's and PIL's rounding of the same filter (measured max 3; a different
    box or flip would differ by tens). With data.auto_augment the rounding can flip a policy's threshold
    (Solarize, Posterize) on a few pixels, so the bound there is on the mean."""
    d = data(interpolation=interpolation, auto_augment=auto_augment, random_erase=0.5)
    pil, fast = pair(d, True, accurate=True)
    erased = 0
    for k, seed in enumerate(SEEDS):
        b = jpegs[k % 3]
        (want, want_box), (got, got_box) = split(pil.load(b, "x.jpg", seed)), split(fast.load(b, "x.jpg", seed))
        assert got.dtype == torch.uint8 and got.shape == want.shape == (3, 64, 64)
        assert torch.equal(got_box, want_box)  # RandomErasing's draw, after the same policy draws
        diff = (got.int() - want.int()).abs()
        if auto_augment == "none":
            assert diff.max() <= 3, (seed, diff.max())
        else:
            assert diff.float().mean() <= 1.0, (seed, diff.float().mean())
        erased += int(want_box[2] > 0)
    assert erased > 0


def test_training_decode_flags_move_pixels_by_about_one_level(jpegs):
    """The default fastdct + fastupsample: a mean change of at most 2 levels per image against the preset."""
    pil, fast = pair(data(), True)
    means = [(fast.load(jpegs[k % 3], "x", s).int() - pil.load(jpegs[k % 3], "x", s).int()).abs().float().mean()
             for k, s in enumerate(SEEDS)]
    assert max(means) <= 2.0 and sum(means) / len(means) > 0  # not the accurate decode: they did change pixels


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("crops", [dict(), dict(val_resize=100, val_crop=80, train_crop=48)])
def test_eval_is_the_pil_path_to_within_the_resize_rounding(jpegs, interpolation, crops):
    d = data(interpolation=interpolation, **crops)
    pil, fast = pair(d, False)
    assert fast.spec() == pil.spec() and fast.size == pil.size
    for b in jpegs:  # 40x30 is upsampled to the resize
        want, got = pil.load(b, "x.jpg", None), fast.load(b, "x.jpg", None)
        assert got.shape == want.shape == (3, pil.crop, pil.crop) and got.dtype == torch.uint8
        assert (got.int() - want.int()).abs().max() <= 2


def test_a_reduced_decode_is_close_to_the_full_resolution_crop():
    """Large JPEGs, crops to 64: most are decoded at 1/2..1/8 (accurate IDCT). Against PIL's filter on the full
    decode over the same box (the one rounded to the 1/d grid, in full-image pixels): mean difference <= 3
    levels of 255 per image, max <= 24 (measured <= 2.2 and 16 on this texture: DCT scaling is another
    low-pass filter). The box itself is within d / 2 pixels of the preset's (test_crop_scale_and_ratio...)."""
    from PIL import Image
    from common.data.files import decode
    reduced = 0
    for w, h in [(1600, 1200), (1000, 750)]:
        b = encode(w, h, 5)
        full, fast = decode(b), pair(data(), True, accurate=True)[1]
        for seed in SEEDS:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seed)
                top, left, ch, cw, flip, d = fast.box(h, w)
            reduced += d > 1
            box = (left * d, top * d, min((left + cw) * d, w), min((top + ch) * d, h))
            want = full.resize((64, 64), Image.BILINEAR, box=box)
            want = torch.from_numpy(np.array(want.transpose(Image.FLIP_LEFT_RIGHT) if flip else want)).permute(2, 0, 1)
            diff = (fast.load(b, "x.jpg", seed).int() - want.int()).abs()
            assert diff.float().mean() <= 3.0 and diff.max() <= 24, (w, seed, d, diff.float().mean(), diff.max())
    assert reduced >= len(SEEDS)


def boxes(t: FastJpeg, height: int, width: int, n: int):
    """n crops of the fast path, seeded per sample as the sampler hands seeds out: (scale, log ratio) of the
    box it actually resizes, in full-image pixels; each checked against the preset's draw for that seed."""
    out = []
    for seed in t.draw(n, torch.Generator().manual_seed(height * width)):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            top, left, h, w, flip, d = t.box(height, width)
            torch.default_generator.manual_seed(seed)
            want = draw_crop(t.rrc, height, width)
        assert flip == want[4] and d == reduction(want[2], want[3], t.size, t.size)
        assert all(abs(a * d - b) <= d / 2 for a, b in zip((top, left, h, w), want[:4]))  # rounded to the 1/d grid
        assert h >= t.size and w >= t.size or d == 1  # reduced: still downsampled
        out.append((h * w * d * d / (height * width), math.log(w / h)))
    return np.array(out)


def ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    return float(np.abs(np.searchsorted(np.sort(a), grid, "right") / len(a)
                        - np.searchsorted(np.sort(b), grid, "right") / len(b)).max())


@pytest.mark.parametrize("size", [(375, 500), (500, 375), (900, 1200), (1500, 2000)])
def test_crop_scale_and_ratio_follow_torchvision(size):
    """2000 crops of the fast path (reduced or not) against 2000 of torchvision's RandomResizedCrop.get_params
    (an independent stream): two-sample KS on the area fraction and the log aspect ratio at alpha = 0.001
    (critical D = 1.949 * sqrt(2 / n) = 0.062). The same test tells a scale range of (0.25, 1) apart."""
    n, (height, width) = 2000, size
    t = FastJpeg(data(image_size=224), True)
    ours = boxes(t, height, width, n)
    img = torch.empty(1, 1, 1).expand(3, height, width)
    g = torch.Generator().manual_seed(1)

    def reference(scale):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
            ps = [v1.RandomResizedCrop.get_params(img, scale, [3 / 4, 4 / 3]) for _ in range(n)]
        return np.array([(h * w / (height * width), math.log(w / h)) for _, _, h, w in ps])
    critical = 1.949 * math.sqrt(2 / n)
    ref = reference([0.08, 1.0])
    assert ks(ours[:, 0], ref[:, 0]) < critical and ks(ours[:, 1], ref[:, 1]) < critical
    assert ks(ours[:, 0], reference([0.25, 1.0])[:, 0]) > critical  # the test has the power to fail


def test_other_files_take_the_pil_path_and_bad_ones_are_named():
    """PNG, grey and CMYK JPEGs: the preset's result exactly. A truncated JPEG (its header reads fine) and a
    file that is no image: the pil path's DataError, naming the file."""
    d = data(random_erase=0.5)
    for train in (True, False):
        pil, fast = pair(d, train)
        for b in (encode(90, 70, 1, fmt="PNG"), encode(90, 70, 2, mode="L"), encode(90, 70, 3, mode="CMYK")):
            for seed in (SEEDS[:3] if train else [None]):
                want, got = split(pil.load(b, "a.png", seed)), split(fast.load(b, "a.png", seed))
                assert all(torch.equal(w, g) for w, g in zip(want, got) if w is not None)
        for bad in (encode(120, 90)[:600], b"not an image", b""):
            with pytest.raises(DataError, match=r"cannot read image /data/train/c0/bad\.jpg .*delete or replace"):
                fast.load(bad, "/data/train/c0/bad.jpg", SEEDS[0] if train else None)


def test_registered_as_data_decode_fast_and_sent_to_spawned_workers(jpegs):
    """data.decode=fast builds it; it pickles (the loaders' workers are spawned) into the same transform."""
    import pickle
    assert type(image_transform(data(), True)) is FastJpeg and type(image_transform(data(decode="pil"), False)) is Preset
    t = image_transform(data(random_erase=0.5), True)
    copy = pickle.loads(pickle.dumps(t))
    for seed in SEEDS[:4]:
        assert all(torch.equal(a, b) for a, b in zip(t.load(jpegs[0], "x", seed), copy.load(jpegs[0], "x", seed)))
