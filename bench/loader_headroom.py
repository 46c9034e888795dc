"""Loader headroom: loader-only samples/s divided by model-step samples/s, per recipe, default settings.

For each recipe, its default config (recipes/configs/<name>.yaml) with its own data builder
(task.build_data); what it is fed follows from the default config's data.name (DATA below):
  * MNIST-sized recipes and the GANs: the real Fashion-MNIST they default to (found offline in
    /usr/share/datasets/fashion-mnist) in the in-memory TensorTrainLoader; synthetic data of the
    same shape and size when it is missing.
  * CIFAR-sized recipes (default cifar10, which needs a download): synthetic 50,000 x 3x32x32
    with the default on-device crop+flip augmentation, in the in-memory TensorTrainLoader.
  * imagenet (data.name=imagefolder): a generated tree of real JPEG files (ImageNet-like 500x375 px)
    streamed by common/data/streaming.py's FolderTrainLoader with the default 8 workers, global batch
    256, 224 px RandomResizedCrop + flip.
Loader-only: batches drawn from the training loader and dropped (after one warm-up batch).
Model step: the recipe's task.train_step (forward, backward, optimizer step) on one fixed batch.
Per-recipe settings are data (RECIPES): the GANs run without their FD judge (eval.classifier=none:
it needs a trained classifier run, and nothing here evaluates).
The two alternate in blocks; the ratio of medians is reported. Target >= 2.

On this CPU machine the model steps are slow, so the ratios are large; what a GPU would need
is printed per recipe as the loader's samples/s (compare with the GPU's images/s).

    python bench/loader_headroom.py [--smoke] [--only mnist_mlp,imagenet] [--json out.json]
"""
from __future__ import annotations

import functools
import gc
import tempfile
import time
import warnings
from pathlib import Path

import torch

try:
    from bench import harness as H
except ImportError:
    import harness as H

import common.data.datasets
import common.data.classifier_data
from common.train.runtime import runtime

CIFAR = ["data.name=synthetic", "data.synthetic_shape=[3,32,32]", "data.synthetic_train=50000",
         "data.synthetic_test=1000", "data.synthetic_classes=10"]
FMNIST_SYNTH = ["data.name=synthetic", "data.synthetic_shape=[1,28,28]", "data.synthetic_train=60000",
                "data.synthetic_test=1000", "data.synthetic_classes=10"]
# The recipe's default data.name -> what this benchmark feeds it.
DATA = {"fashion_mnist": "fmnist", "cifar10": "cifar", "imagefolder": "jpeg"}
NO_JUDGE = ["eval.classifier=none"]  # the GANs' FD judge needs a trained classifier run; nothing evaluates here
# recipe: (overrides for both arms, overrides for the model-step measurement only)
RECIPES = {
    "mnist_mlp": ([], []),
    "mnist_cnn": ([], []),
    "lenet_cifar": ([], []),
    "resnet_cifar": ([], []),
    "senet_cifar": ([], []),
    "vgg_cifar": ([], []),
    "gan_mnist": (NO_JUDGE, []),
    "cgan_mnist": (NO_JUDGE, []),
    "dcgan": (NO_JUDGE, []),
    "pix2pix": (NO_JUDGE, []),
    # ResNet-50 at 224 px is ~3 min per 256-image step on one CPU thread: time the model at batch 8
    # (samples/s barely depends on the batch on a CPU); the loader runs at the default 256.
    "imagenet": ([], ["train.batch_size=8", "data.workers=0"]),
}
SMOKE_DATA = {"fmnist": FMNIST_SYNTH[:2] + ["data.synthetic_train=256", "data.synthetic_test=64"],
              "cifar": CIFAR[:2] + ["data.synthetic_train=256", "data.synthetic_test=64"]}
SMOKE_SIZES = {  # tiny models and batches: the smoke run only checks that everything executes
    "mnist_mlp": ["train.batch_size=16", "model.hidden=[16]"],
    "mnist_cnn": ["train.batch_size=16"],
    "lenet_cifar": ["train.batch_size=16"],
    "resnet_cifar": ["train.batch_size=16", "model.width_mult=0.25"],
    "senet_cifar": ["train.batch_size=16", "model.width_mult=0.25"],
    "vgg_cifar": ["train.batch_size=16", "model.width_mult=0.0625"],
    "gan_mnist": ["train.batch_size=16"],
    "cgan_mnist": ["train.batch_size=16"],
    "dcgan": ["train.batch_size=16"],
    "pix2pix": ["train.batch_size=16"],
    "imagenet": ["train.batch_size=8", "data.image_size=32", "data.workers=2", "model.name=resnet18"],
}
FMNIST_FILES = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def make_jpeg_tree(root: Path, n_train: int, n_val: int, classes: int = 8, size=(500, 375)) -> Path:
    """Real JPEG files, ImageNet-like size and compressibility: smooth colour fields plus texture. size: (w, h),
    or a list of them taken in turn."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    sizes = size if isinstance(size, list) else [size]
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            w, h = sizes[i % len(sizes)]
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            c = i % classes
            d = root / split / f"class_{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.28)]
            base = 127 + 100 * np.sin(fx * xx + fy * yy + phase)
            img = np.stack([base * (0.5 + 0.5 * ((c >> k) & 1)) for k in range(3)], -1)
            img += rng.normal(0, 12, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:05d}.jpg", quality=90)
    return root


def _memoize_synthetic() -> None:
    """Four CIFAR-sized recipes share one synthetic dataset instead of generating it four times."""
    if getattr(common.data.datasets.synthetic, "memoized", False):
        return
    original = common.data.datasets.synthetic

    @functools.lru_cache(maxsize=4)
    def cached(n, shape, classes, split):
        return original(n, list(shape), classes, split)

    def synthetic(n, shape, classes, split):
        return cached(n, tuple(shape), classes, split)

    synthetic.memoized = True
    common.data.datasets.synthetic = synthetic


def loader_block(train, steps: int) -> float:
    """samples/s of the training loader alone, after one warm-up batch (persistent workers stay up)."""
    train.set_epoch(0, 0)
    it = iter(train)
    next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        micro = next(it)
        n += sum(len(x) for x, _ in micro)
    dt = time.perf_counter() - t0
    del it
    return n / dt


def epoch_block(train) -> float:
    """samples/s over one whole epoch from the first request, start-up latency included (a lower bound):
    for worker loaders whose epoch is only a few batches, where 'after the first batch' would count
    batches decoded in parallel with the first one as free."""
    train.set_epoch(0, 0)
    n, t0 = 0, time.perf_counter()
    for micro in train:
        n += sum(len(x) for x, _ in micro)
    return n / (time.perf_counter() - t0)


def model_block(mod, cfg, state, rt, batch, steps: int) -> float:
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        mod.task.train_step(cfg, batch, state, rt)
        n += len(batch[0])
    H.sync(rt.device)
    return n / (time.perf_counter() - t0)


def data_kind(name: str) -> str:
    """fmnist, cifar or jpeg: from the data.name of the recipe's default config."""
    return DATA[H.recipe_config(H.load_recipe(name), []).data.name]


def measure(name: str, kind: str, extra: list[str], model_extra: list[str], tmp: Path, smoke: bool,
            jpeg_root: Path | None) -> dict:
    H.single_process_env()
    mod = H.load_recipe(name)
    base = ["device=cpu", "resume=none", f"out_dir={tmp / name}", "train.progress=false", *extra]
    note = ""
    if smoke:
        data_over = {"fmnist": SMOKE_DATA["fmnist"], "cifar": SMOKE_DATA["cifar"],
                     "jpeg": [f"data.root={jpeg_root}"]}[kind]
        sizes = SMOKE_SIZES[name]
        model_extra = []  # the smoke sizes are small already: one config for both arms
    else:
        sizes = []
        if kind == "fmnist":
            data_over = [] if FMNIST_FILES.exists() else FMNIST_SYNTH
            note = "real Fashion-MNIST" if FMNIST_FILES.exists() else "synthetic 60,000 x 1x28x28 (Fashion-MNIST not found)"
        elif kind == "jpeg":
            data_over = [f"data.root={jpeg_root}"]
            note = f"generated JPEG tree {jpeg_root}"
        else:
            data_over = CIFAR
            note = "synthetic 50,000 x 3x32x32"
    cfg = H.recipe_config(mod, [*base, *data_over, *sizes])
    model_cfg = H.recipe_config(mod, [*base, *data_over, *sizes, *model_extra])
    with runtime(cfg) as rt:
        loaders = mod.task.build_data(cfg, rt)
        # the model arm: its own loaders only when its config differs (imagenet's smaller batch)
        model_loaders = loaders if not model_extra else mod.task.build_data(model_cfg, rt)
        rates, first, per_step, streaming = time_arms(mod, rt, loaders.train, model_cfg, model_loaders, smoke)
        del loaders, model_loaders
        gc.collect()  # stop persistent DataLoader workers before the next recipe
    loader_rate, model_rate = H.median(rates["loader"]), H.median(rates["model"])
    return {"loader_samples_per_s": loader_rate, "model_samples_per_s": model_rate,
            "loader_blocks": rates["loader"], "model_blocks": rates["model"],
            "global_batch": cfg.train.batch_size, "model_step_batch": per_step, "data": note,
            "loader": "FolderTrainLoader, workers=%d, whole epochs from the first request" % cfg.data.workers
            if streaming else "TensorTrainLoader (in memory)" + (", augment" if getattr(cfg.data, "augment", False) else "")}


def time_arms(mod, rt, train, model_cfg, model_loaders, smoke: bool):
    """Alternate the loader arm and the model arm; returns (rates, first step s, model batch, streaming).
    Its state, batch and loader iterators go when it returns."""
    state = mod.task.build_state(model_cfg, rt, model_loaders)
    model_loaders.train.set_epoch(0, 0)
    batch = next(iter(model_loaders.train))[0]
    with H.quiet():
        t0 = time.perf_counter()
        mod.task.train_step(model_cfg, batch, state, rt)  # warm-up (allocations, kernel selection)
        first = time.perf_counter() - t0
    streaming = not isinstance(train, common.data.classifier_data.TensorTrainLoader)
    # Blocks of roughly a second or two each; at least 2 model steps.
    model_steps = max(2, min(50, int(1.5 / max(first, 1e-4))))
    loader_steps = 1 if smoke else 30
    if streaming:
        arms = {"loader": lambda: epoch_block(train)}
    else:
        arms = {"loader": lambda: loader_block(train, min(loader_steps, max(1, train.plan.steps - 1)))}
    arms["model"] = lambda: model_block(mod, model_cfg, state, rt, batch, 1 if smoke else model_steps)
    pairs = 1 if smoke else (2 if first > 1.0 else 3)
    return H.alternate(arms, pairs), first, batch[0].shape[0], streaming


def run(args) -> dict:
    t0 = time.perf_counter()
    # imagenet's default 8 workers on a 2-core machine: DataLoader warns; the setting is the recipe's.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    torch.set_num_threads(args.threads)
    _memoize_synthetic()
    names = [n for n in RECIPES if not args.only or n in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        tmp = Path(tmp)
        kinds = {n: data_kind(n) for n in names}
        jpeg_root = None
        if "jpeg" in kinds.values():
            n_train = 64 if args.smoke else 1024
            jpeg_root = make_jpeg_tree(tmp / "jpeg", n_train, 16, size=(64, 48) if args.smoke else (500, 375))
        for name in names:
            extra, model_extra = RECIPES[name]
            m = measure(name, kinds[name], extra, model_extra, tmp, args.smoke, jpeg_root)
            ratio = m["loader_samples_per_s"] / m["model_samples_per_s"]
            rows.append(H.row(f"loader_headroom/{name}", ratio, ">=", 2.0, m))
            print(f"  {name}: loader {m['loader_samples_per_s']:.0f}/s, model {m['model_samples_per_s']:.1f}/s, "
                  f"ratio {ratio:.1f}", flush=True)
    return H.report("loader_headroom", rows, {"threads": args.threads, "device": "cpu", "smoke": args.smoke}, t0)


def main(argv=None):
    return H.cli_main(__doc__, run, argv, lambda p: p.add_argument("--only", default="", help="comma-separated recipe names"))


if __name__ == "__main__":
    main()
