"""JPEG cost: data.decode=fast against torchvision's reference loader, images per second per worker core.

The ImageNet training pipeline, decode -> RandomResizedCrop 224 (bilinear, antialiased) -> flip -> tensor, on
generated JPEGs (quality 90; loader_headroom's texture), two trees of 512: all 500x375, and MIXED sizes. Loader
arms, each a DataLoader with the same workers (2) and batch (32), alternated (A B C D, D C B A, ...), whole
epochs after one untimed one:
  * fast: recipes/imagenet.py's training loader (task.build_data) with data.decode=fast, its uint8 batches as
    the workers hand them over (float conversion and normalisation run on the device in training: not here);
  * pil: the same with data.decode=pil (torchvision's preset on PIL images, uint8 out);
  * torchvision: ImageFolder + ClassificationPresetTrain (PIL backend, transforms v1: RandomResizedCrop, flip,
    PILToTensor, ConvertImageDtype(float), Normalize, per image in the workers, as its train.py runs it);
  * torchvision_uint8: that preset stopped at PILToTensor: the same work as fast's, to the uint8 tensor.
Per core = images / CPU seconds of the workers and the main process together (loader_cost.cpu_seconds).
Rows: fast / torchvision per core (target >= 2); fast / torchvision_uint8 and pil / torchvision beside it.
Levers: each variant of the per-image work (LEVERS) in this process, one thread, alternated; images per CPU s.

    python bench/jpeg_cost.py [--smoke] [--workers 2] [--pairs 5] [--json out.json]
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

try:
    from bench import harness as H
    from bench.loader_cost import loader_args, reference_loader, timed
    from bench.loader_headroom import make_jpeg_tree
except ImportError:
    import harness as H
    from loader_cost import loader_args, reference_loader, timed
    from loader_headroom import make_jpeg_tree
from common.data.fast_jpeg import FastJpeg, decode, reduction
from common.data.transforms import Preset, draw_crop
from common.train.runtime import runtime

# ImageNet-like: 13 of 16 at its common sizes (500 px on the longer side or less), 3 larger ones.
MIXED = [(500, 375)] * 4 + [(375, 500)] * 2 + [(500, 333)] * 3 + [(333, 500), (500, 500), (400, 300), (300, 225),
                                                                   (640, 480), (1024, 768), (1600, 1200)]
TREES = {"500x375": (500, 375), "mixed": MIXED}
SMOKE_TREES = {"500x375": (64, 48), "mixed": [(64, 48), (48, 64), (160, 120)]}


class Full(FastJpeg):
    reductions, train_flags = (), {}  # always full size, accurate IDCT and upsampling


class AnyScale(FastJpeg):
    reductions, train_flags = tuple(8 / m for m in range(1, 8)), {}  # every M/8 scale libjpeg-turbo has


class PowerOfTwo(FastJpeg):
    train_flags = {}


class PilResize(FastJpeg):
    """fast's draws and reduced decode, the crop resized by PIL's resize(box=...) (a float box) instead of torch."""

    def fast_worker(self, job):
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor
        data, height, width = job
        top, left, h, w, flip = draw_crop(self.rrc, height, width)
        d = reduction(h, w, self.size, self.size, self.reductions)
        img = Image.fromarray(decode(data, height, width, d, **self.train_flags).numpy())
        out = img.resize((self.size, self.size), Image.BILINEAR, box=(left / d, top / d, (left + w) / d, (top + h) / d))
        return pil_to_tensor(out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out)


LEVERS = {"pil (Preset: PIL decode, v2 ops)": Preset, "simplejpeg full size + torch resize": Full,
          "+ every M/8 DCT scale": AnyScale, "+ power-of-two DCT scales only": PowerOfTwo,
          "+ fastdct, fastupsample (= fast)": FastJpeg, "fast, PIL resize(box) instead of torch": PilResize}


def levers(files: list[Path], crop: int, pairs: int) -> dict[str, float]:
    """Images per CPU second of each LEVERS variant's load(bytes, name, seed) over `files`, one thread."""
    d = SimpleNamespace(image_size=crop, train_crop=0, val_resize=0, val_crop=0, interpolation="bilinear",
                        auto_augment="none", randaugment_magnitude=9, randaugment_ops=2, augmix_severity=3, random_erase=0.0)
    data = [(f.read_bytes(), str(f)) for f in files]
    seeds = torch.randint(0, 2**62, (len(data),), generator=torch.Generator().manual_seed(0)).tolist()

    def block(t):
        c0 = time.process_time()
        for (b, where), seed in zip(data, seeds):
            t.load(b, where, seed)
        return len(data) / max(time.process_time() - c0, 1e-3)
    arms = {name: (lambda t=cls(d, True): block(t)) for name, cls in LEVERS.items()}
    return {k: H.median(v) for k, v in H.alternate(arms, pairs).items()}


def loader_arms(root: Path, tmp: Path, batch: int, crop: int, workers: int, pairs: int) -> dict[str, float]:
    """Images per CPU second of each loader arm (median over `pairs` alternated epochs)."""
    H.single_process_env()
    mod = H.load_recipe("imagenet")
    cfgs = {k: H.recipe_config(mod, ["device=cpu", "resume=none", f"out_dir={tmp / k}", "train.progress=false",
                                     f"data.root={root}", f"data.workers={workers}", f"data.image_size={crop}",
                                     f"train.batch_size={batch}", f"data.decode={k}"]) for k in ("fast", "pil")}
    with runtime(cfgs["fast"]) as rt:
        ours = {k: mod.task.build_data(cfg, rt).train for k, cfg in cfgs.items()}
        for t in ours.values():
            t.set_epoch(0, 0)
        refs = {k: reference_loader(root, crop, None, 0.0, False, batch, workers, uint8=u)
                for k, u in (("torchvision", False), ("torchvision_uint8", True))}
        loaders = {"fast": ours["fast"].loader, "pil": ours["pil"].loader, **refs}
        arms = {k: (lambda ld=ld: timed(ld, rt.device)) for k, ld in loaders.items()}
        for arm in arms.values():
            arm()  # warm-up: workers started, files in the page cache
        blocks = H.alternate(arms, pairs)
        del ours, refs, loaders
    return {k: H.median([b["per_cpu_s"] for b in v]) for k, v in blocks.items()}


def run(args) -> dict:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    workers, pairs = getattr(args, "workers", 2), getattr(args, "pairs", 5)  # python -m bench: the defaults
    if args.smoke:
        workers, pairs = 0, 1  # the loaders' code in the main process: no worker start-up in CI
    n, batch, crop = (32, 8, 32) if args.smoke else (512, 32, 224)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_jpeg_cost_") as tmp:
        tmp = Path(tmp)
        for name, sizes in (SMOKE_TREES if args.smoke else TREES).items():
            root = make_jpeg_tree(tmp / name, n, 8, size=sizes)
            m = loader_arms(root, tmp / f"{name}_runs", batch, crop, workers, pairs)
            first = 8 if args.smoke else 128  # the first images written: the sizes in the tree's proportions
            files = sorted(f for f in (root / "train").rglob("*.jpg") if int(f.stem) < first)
            lv = levers(files, crop, pairs)
            details = {"images_per_cpu_s": m, "levers_images_per_cpu_s (one process, one thread)": lv,
                       "workers": workers, "batch": batch, "crop": crop, "images": n, "sizes": str(sizes)}
            rows.append(H.row(f"jpeg_cost/{name} fast / torchvision", m["fast"] / m["torchvision"], ">=", 2.0, details))
            rows.append(H.row(f"jpeg_cost/{name} fast / torchvision_uint8", m["fast"] / m["torchvision_uint8"], "", None))
            rows.append(H.row(f"jpeg_cost/{name} pil / torchvision", m["pil"] / m["torchvision"], "", None))
            print(f"  {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in m.items()) + " images per CPU second", flush=True)
    return H.report("jpeg_cost", rows, {"threads": args.threads, "device": "cpu", "smoke": args.smoke,
                                        "workers": workers, "pairs": pairs}, t0)


def main(argv=None):
    return H.cli_main(__doc__, run, argv, loader_args)


if __name__ == "__main__":
    main()
