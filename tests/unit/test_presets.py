"""imagenet.py's image pipeline (common/data/transforms.py Preset) is torchvision's ClassificationPresetTrain /
ClassificationPresetEval: the same ops with the same parameters in the same order, and for the same JPEG and
the same seed the same tensor, bit for bit, for every data.auto_augment policy and both interpolations.

The reference below is written here from the published definition of references/classification/presets.py
(not in the installed package). Its `use_v2=True` builds it from torchvision.transforms.v2, as dtrain does;
the default `use_v2=False` (transforms v1) is the subject of the last test.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate
from torchvision import transforms as v1
from torchvision.transforms import v2

from common.config import ConfigError
from common.data.files import decode
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preset

POLICIES = {"none": None, "autoaugment": "imagenet", "randaugment": "ra", "ta_wide": "ta_wide", "augmix": "augmix"}


def preset_train(T, *, crop_size, interpolation, auto_augment_policy=None, ra_magnitude=9, augmix_severity=3,
                 random_erase_prob=0.0, use_v2=True):
    """ClassificationPresetTrain(backend="pil") with T = torchvision.transforms.v2 (use_v2) or transforms."""
    t = [T.RandomResizedCrop(crop_size, interpolation=interpolation, antialias=True), T.RandomHorizontalFlip(0.5)]
    if auto_augment_policy == "ra":
        t.append(T.RandAugment(interpolation=interpolation, magnitude=ra_magnitude))
    elif auto_augment_policy == "ta_wide":
        t.append(T.TrivialAugmentWide(interpolation=interpolation))
    elif auto_augment_policy == "augmix":
        t.append(T.AugMix(interpolation=interpolation, severity=augmix_severity))
    elif auto_augment_policy is not None:
        t.append(T.AutoAugment(policy=T.AutoAugmentPolicy(auto_augment_policy), interpolation=interpolation))
    t += [T.PILToTensor(), T.ToDtype(torch.float, scale=True) if use_v2 else T.ConvertImageDtype(torch.float),
          T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]
    if random_erase_prob > 0:
        t.append(T.RandomErasing(p=random_erase_prob))
    return t + ([T.ToPureTensor()] if use_v2 else [])


def preset_eval(T, *, crop_size, resize_size, interpolation, use_v2=True):
    """ClassificationPresetEval(backend="pil")."""
    return [T.Resize(resize_size, interpolation=interpolation, antialias=True), T.CenterCrop(crop_size),
            T.PILToTensor(), T.ToDtype(torch.float, scale=True) if use_v2 else T.ConvertImageDtype(torch.float),
            T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)] + ([T.ToPureTensor()] if use_v2 else [])


def data(**kw):
    d = dict(image_size=176, train_crop=0, val_resize=0, val_crop=0, interpolation="bilinear", auto_augment="none",
             randaugment_magnitude=9, randaugment_ops=2, augmix_severity=3, random_erase=0.0)
    return SimpleNamespace(**{**d, **kw})


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """ImageNet-like JPEGs (quality 90): 500x375, 375x500 and a small 120x90, textured colour fields."""
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for k, (w, h) in enumerate([(500, 375), (375, 500), (120, 90)]):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = 127 + 100 * np.sin(0.013 * (k + 1) * xx + 0.021 * yy + k)
        img = np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 12, (h, w, 3))
        paths.append(tmp_path_factory.mktemp("jpegs") / f"{k}.jpg")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return [decode(p) for p in paths]  # the file as the loaders read it (ImageFolder's loader: RGB PIL)


def dtrain(t: Preset, img, seed):
    """One image through the worker (seeded as the sampler hands it out) and the on-device finish."""
    return t.on_device(default_collate([t(img, seed)]))[0]


def reference(ops, img, seed, T=v2):
    torch.manual_seed(seed)  # the CPU generator as Seeded seeds it for the sample
    return T.Compose(ops)(img)


def ops_of(t: Preset) -> list[str]:
    """Each op with its parameters (repr lists them all); Normalize runs in place on dtrain's fresh float
    batch, which changes no value."""
    ops = [*t.ops.transforms, *t.finish.transforms] + ([t.erase] if t.erase is not None else [])
    return [repr(o).replace("inplace=True", "inplace=False") if isinstance(o, v2.Normalize) else repr(o) for o in ops]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("auto_augment", list(POLICIES))
def test_train_pipeline_is_the_preset_bit_for_bit(jpegs, auto_augment, interpolation):
    mode = v2.InterpolationMode(interpolation)
    d = data(auto_augment=auto_augment, interpolation=interpolation, random_erase=0.5, randaugment_magnitude=11,
             augmix_severity=4)
    if auto_augment == "augmix" and interpolation == "bicubic":  # torchvision's own AugMix raises mid-run here
        with pytest.raises(ConfigError, match="augmix works with data.interpolation=bilinear only"):
            Preset(d, train=True)
        with pytest.raises(ValueError, match="bicubic"):
            for seed in range(20):  # the preset fails as soon as a chain draws a geometric op
                reference(preset_train(v2, crop_size=176, interpolation=mode, auto_augment_policy="augmix"), jpegs[0], seed)
        return
    ref = preset_train(v2, crop_size=176, interpolation=mode, auto_augment_policy=POLICIES[auto_augment],
                       ra_magnitude=11, augmix_severity=4, random_erase_prob=0.5)
    t = Preset(d, train=True)
    # The same ops, parameters and order (repr lists every parameter; ToPureTensor only unwraps the type).
    assert ops_of(t) == [repr(o) for o in ref[:-1]]
    assert t.size == 176
    erased = 0
    for seed in range(8):
        img = jpegs[seed % len(jpegs)]
        seed = 7919 * seed + 2 ** 61  # seeds as Seeded.draw makes them: up to 2**62
        got, want = dtrain(t, img, seed), reference(ref, img, seed)
        assert got.dtype == want.dtype == torch.float32 and got.shape == want.shape == (3, 176, 176)
        assert torch.equal(got, want), (auto_augment, interpolation, seed)
        erased += int((got == 0).all(0).any())
    assert erased > 0  # the erasing drew boxes (p=0.5): equality covers them


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("crops", [dict(), dict(val_resize=232, val_crop=224, train_crop=176)])
def test_eval_pipeline_is_the_preset_bit_for_bit(jpegs, crops, interpolation):
    mode = v2.InterpolationMode(interpolation)
    t = Preset(data(interpolation=interpolation, **crops), train=False)
    resize, crop = crops.get("val_resize", round(176 / 0.875)), crops.get("val_crop", 176)
    ref = preset_eval(v2, crop_size=crop, resize_size=resize, interpolation=mode)
    assert ops_of(t) == [repr(o) for o in ref[:-1]]
    assert t.spec() == dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, resize=resize, center_crop=crop,
                            interpolation=interpolation)
    for img in jpegs:
        got, want = dtrain(t, img, None), reference(ref, img, 0)
        assert got.shape == (3, crop, crop) and torch.equal(got, want)


def test_the_v1_preset_differs_only_in_its_float_conversion(jpegs):
    """torchvision's default preset (use_v2=False) draws the same crops, flips and erasing boxes, and its uint8
    images are dtrain's; ConvertImageDtype divides by 255 where v2's ToDtype multiplies by 1/255 (1 ulp
    apart). Its policies draw in another order than v2's (v1 AutoAugment draws both ops' probabilities
    first, v1 signs come from randint(2)), so with a policy on, the same seed is another augmentation."""
    t = Preset(data(random_erase=0.5), train=True)
    ref = preset_train(v1, crop_size=176, interpolation=v1.InterpolationMode.BILINEAR, random_erase_prob=0.5,
                       use_v2=False)
    for seed in range(12):
        img = jpegs[seed % len(jpegs)]
        uint8, box = t(img, seed)
        torch.manual_seed(seed)
        assert torch.equal(uint8, v1.Compose(ref[:3])(img))
        x = v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)(uint8.float().div(255))  # ConvertImageDtype's arithmetic
        i, j, h, w = box.tolist()
        x[:, i:i + h, j:j + w] = 0
        assert torch.equal(x, reference(ref, img, seed, T=v1))


def test_crops_and_their_errors():
    assert Preset(data(image_size=64), train=True).size == 64
    t = Preset(data(image_size=64), train=False)
    assert (t.size, t.resize, t.crop) == (64, 73, 64)  # round(64 / 0.875), as torchvision's 224 -> 256
    fixres = data(train_crop=176, val_resize=232, val_crop=224)
    assert Preset(fixres, train=True).size == 176 and Preset(fixres, train=False).size == 224
    with pytest.raises(ConfigError, match=r"data.val_resize=200 is smaller than data.val_crop=224.*set data.val_resize >= 224"):
        Preset(data(val_resize=200, val_crop=224), train=False)
