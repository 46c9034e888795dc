"""Loader cost: imagenet.py's JPEG pipeline against torchvision's reference loader, images/s per worker core.

Side by side in one run, on the same generated JPEGs (ImageNet-like 500x375, quality 90; loader_headroom's
tree), with the same worker count, batch and crop:
  * dtrain: recipes/imagenet.py's own loader (task.build_data: FolderTrainLoader, common/data/transforms.py
    Preset), each batch taken to the device, where it becomes float and is normalised and erased;
  * torchvision: ImageFolder + ClassificationPresetTrain (its default: PIL backend, transforms v1, written
    here from references/classification/presets.py) in a DataLoader, each batch taken to the device, as
    references/classification/train.py runs it.
Three settings: (a) augmentation off (RandomResizedCrop + flip); (b) TrivialAugment-wide + random erasing 0.1;
(c) (b) + MixUp 0.2 / CutMix 1.0 (torchvision's ResNet-50 v2 recipe): the reference mixes in its collate_fn,
in the workers, as train.py does; dtrain's loader mixes the batch on the device after the transfer
(data.mixup_alpha, data.cutmix_alpha: common/data/mixing.py, the same torchvision v2 MixUp/CutMix).
Each arm: one untimed epoch (workers started, files in the page cache), then whole epochs from the first
request, arms alternated. Per core: images / CPU seconds of the worker processes and of the training process
(the batch's finishing and mixing, which a GPU does on a GPU machine, is counted on the CPU here), read from
/proc, so other load on a shared machine slows both arms without shifting their ratio. Reported: the ratio
of medians (dtrain / torchvision), target >= 1; images/s per worker by the wall clock beside it.

    python bench/loader_cost.py [--smoke] [--workers 2] [--json out.json]
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

try:
    from bench import harness as H
    from bench.loader_headroom import make_jpeg_tree
except ImportError:
    import harness as H
    from loader_headroom import make_jpeg_tree
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from common.train.runtime import runtime

SETTINGS = {  # name -> (imagenet.py overrides, the preset's auto_augment_policy, random_erase_prob, mix)
    "aug_off": ([], None, 0.0, False),
    "ta_wide_erase": (["data.auto_augment=ta_wide", "data.random_erase=0.1"], "ta_wide", 0.1, False),
    "ta_wide_erase_mixup_cutmix": (["data.auto_augment=ta_wide", "data.random_erase=0.1", "data.mixup_alpha=0.2",
                                    "data.cutmix_alpha=1.0"], "ta_wide", 0.1, True),
}


def mixer(num_classes: int):
    """The reference's mix, as torchvision's train.py builds it (dtrain's loader mixes by its config keys)."""
    from torchvision.transforms import v2
    return v2.RandomChoice([v2.MixUp(alpha=0.2, num_classes=num_classes), v2.CutMix(alpha=1.0, num_classes=num_classes)])


def reference_loader(root: Path, crop: int, policy, erase: float, mix: bool, batch: int, workers: int,
                     uint8: bool = False):
    """torchvision's ImageFolder + ClassificationPresetTrain(crop_size=crop, auto_augment_policy=policy,
    random_erase_prob=erase) in a DataLoader; MixUp/CutMix in the collate_fn as train.py does. uint8: the
    preset stopped at PILToTensor (no ConvertImageDtype, Normalize)."""
    from torch.utils.data import DataLoader, default_collate
    from torchvision import datasets, transforms as T
    ops = [T.RandomResizedCrop(crop, interpolation=T.InterpolationMode.BILINEAR, antialias=True), T.RandomHorizontalFlip(0.5)]
    ops += [T.TrivialAugmentWide(interpolation=T.InterpolationMode.BILINEAR)] if policy == "ta_wide" else []
    ops += [T.PILToTensor()] + ([] if uint8 else [T.ConvertImageDtype(torch.float), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ops += [T.RandomErasing(p=erase)] if erase > 0 else []
    ds = datasets.ImageFolder(str(root / "train"), transform=T.Compose(ops))
    mixing = mixer(len(ds.classes)) if mix else None

    def collate(samples):
        return mixing(*default_collate(samples)) if mixing else default_collate(samples)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True, collate_fn=collate,
                      persistent_workers=workers > 0, pin_memory=False)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of every live process under it (the loaders' workers),
    read from /proc/PID/stat."""
    tick, parent, used = os.sysconf("SC_CLK_TCK"), {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone since the listing
            continue
        parent[int(pid)], used[int(pid)] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    ours, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        ours.add(pid)
        todo += [c for c, p in parent.items() if p == pid and c not in ours]
    return sum(used.get(pid, 0.0) for pid in ours)


def timed(batches, device) -> dict:
    """One epoch of (x, y) batches taken to the device: images per CPU second and per second."""
    n, t0, c0 = 0, time.perf_counter(), cpu_seconds()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n += len(x)
    H.sync(device)
    cpu = max(cpu_seconds() - c0, 0.01)  # the kernel counts CPU time in 10 ms ticks (a smoke epoch can read 0)
    return {"per_cpu_s": n / cpu, "per_s": n / (time.perf_counter() - t0)}


def micro_batches(train):
    for micro in train:
        yield from micro


def measure(name: str, jpeg: Path, tmp: Path, batch: int, crop: int, workers: int, pairs: int) -> dict:
    H.single_process_env()
    mod = H.load_recipe("imagenet")
    overrides, policy, erase, mix = SETTINGS[name]
    cfg = H.recipe_config(mod, ["device=cpu", "resume=none", f"out_dir={tmp / name}", "train.progress=false",
                                f"data.root={jpeg}", f"data.workers={workers}", f"data.image_size={crop}",
                                f"train.batch_size={batch}", *overrides])
    with runtime(cfg) as rt:
        loaders = mod.task.build_data(cfg, rt)
        train, device = loaders.train, rt.device
        train.set_epoch(0, 0)
        assert (train.mix is not None) == mix  # dtrain mixes on the device inside its loader
        ref = reference_loader(jpeg, crop, policy, erase, mix, batch, workers)
        arms = {"dtrain": lambda: timed(micro_batches(train), device), "torchvision": lambda: timed(ref, device)}
        for arm in arms.values():
            arm()  # warm-up: workers started, files in the page cache
        blocks = H.alternate(arms, pairs)
        del loaders, train, ref
    per_core = {k: H.median([b["per_cpu_s"] for b in v]) for k, v in blocks.items()}
    wall = {k: H.median([b["per_s"] for b in v]) / max(workers, 1) for k, v in blocks.items()}
    return {"dtrain_images_per_cpu_s": per_core["dtrain"], "torchvision_images_per_cpu_s": per_core["torchvision"],
            "wall_images_per_s_per_worker (dtrain, torchvision)": [wall["dtrain"], wall["torchvision"]],
            "dtrain_blocks": [b["per_cpu_s"] for b in blocks["dtrain"]],
            "torchvision_blocks": [b["per_cpu_s"] for b in blocks["torchvision"]],
            "workers": workers, "batch": batch, "crop": crop, "settings": " ".join(overrides) or "defaults"}


def run(args) -> dict:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    workers, args.pairs = getattr(args, "workers", 2), getattr(args, "pairs", 5)  # python -m bench: the defaults
    if args.smoke:
        workers = 0  # the loaders' code in the main process: no worker start-up in CI
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_loader_cost_") as tmp:
        tmp = Path(tmp)
        n, size, batch, crop = (32, (64, 48), 8, 32) if args.smoke else (512, (500, 375), 32, 224)
        jpeg = make_jpeg_tree(tmp / "jpeg", n, 8, size=size)
        for name in SETTINGS:
            m = measure(name, jpeg, tmp, batch, crop, workers, 1 if args.smoke else args.pairs)
            ratio = m["dtrain_images_per_cpu_s"] / m["torchvision_images_per_cpu_s"]
            rows.append(H.row(f"loader_cost/{name}", ratio, ">=", 1.0, m))
            print(f"  {name}: dtrain {m['dtrain_images_per_cpu_s']:.1f}, torchvision "
                  f"{m['torchvision_images_per_cpu_s']:.1f} images per CPU second; ratio {ratio:.3f}", flush=True)
    return H.report("loader_cost", rows, {"threads": args.threads, "device": "cpu", "smoke": args.smoke,
                                          "workers": workers}, t0)


def loader_args(p) -> None:
    """The loader benchmarks' own flags (this one and jpeg_cost.py)."""
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of each arm")
    p.add_argument("--pairs", type=int, default=5, help="timed epochs per arm, alternated")


def main(argv=None):
    return H.cli_main(__doc__, run, argv, loader_args)


if __name__ == "__main__":
    main()
