"""The streaming loaders: files (or a user Dataset) decoded by DataLoader workers, per step on the device.

One train and one eval loader with classifier_data.py's contract: per step a list of grad_accum
micro-batches on the device, TrainPlan shards, order from (seed, epoch), resume by step index
(set_epoch(epoch, start_step)), unpadded eval shards with `.total`. Per-sample parameters come from
the dataset's transform (common/data/transforms.py), handed out by the sampler by epoch position;
the training process's global RNG is never touched (data.workers=0 included).
"""
from __future__ import annotations

import signal
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from common.data.files import DataError
from common.data.sampling import TrainPlan, augment_generator, check_batch, epoch_order, eval_shard


class ImageFiles(Dataset):
    """Image files under root with labels; item (index, params) -> (transform.load(bytes, name, params), label).

    A sample is read as its file's bytes (`read`, named by `where` in errors) and decoded by the transform,
    so every source of the same bytes (a folder, tar shards: common/data/shards.py) gives the same batches.
    """

    def __init__(self, root: Path, files: list[str], labels: list[int], transform):
        self.root, self.files, self.labels, self.transform = Path(root), files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def where(self, i: int) -> str:
        return str(self.root / self.files[i])

    def read(self, i: int) -> bytes:
        try:
            return (self.root / self.files[i]).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read image {self.where(i)} ({e.strerror or e}); delete or replace the file") from None

    def __getitem__(self, item):
        i, params = item
        return self.transform.load(self.read(i), self.where(i), params), self.labels[i]


class EpochBatches(Sampler):
    """This rank's [(index, params)] per step of the epoch set by set_epoch, for DataLoader(batch_sampler=...)."""

    def __init__(self, plan: TrainPlan, rank: int, seed: int, draw, lead: bool = False):
        self.plan, self.rank, self.seed, self.draw = plan, rank, seed, draw
        self.lead = lead  # each step led by the sample its first is mixed with (common/data/mixing.py)
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.plan.steps - self.start_step

    def __iter__(self):
        n = self.plan.n
        order = epoch_order(n, self.seed, self.epoch).tolist()
        params = self.draw(n, augment_generator(self.seed, self.epoch))  # by view position: repeats differ
        for step in range(self.start_step, self.plan.steps):
            samples, views = self.plan.views(step, self.rank, lead=self.lead)
            yield [(order[s], params[v]) for s, v in zip(samples.tolist(), views.tolist())]


def _ignore_ctrl_c(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal's group: the workers leave it to the training
    process, which checkpoints and then shuts them down (common/train/preempt.py)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _loader(ds: ImageFiles, batches, workers: int, rt, prefetch: int = 4) -> DataLoader:
    """One DataLoader per run: persistent workers (warm file caches); each pass re-reads the sampler.

    Spawned, not forked: the process has threads by now (process group, TensorBoard writer), and a
    forked child can wait forever on a lock one of them held. Its own generator: an iterator
    otherwise draws a base seed from the global RNG, shifting the training stream (dropout,
    noise) and breaking bitwise resume; workers need no randomness of their own. Pinned host
    memory lets the copy to the GPU overlap compute.
    """
    return DataLoader(ds, batch_sampler=batches, num_workers=workers, persistent_workers=workers > 0,
                      collate_fn=getattr(ds.transform, "collate", None),  # e.g. JPEG bytes of unequal lengths
                      pin_memory=rt.device.type == "cuda", multiprocessing_context="spawn" if workers > 0 else None,
                      prefetch_factor=prefetch if workers > 0 else None, generator=torch.Generator().manual_seed(0),
                      worker_init_fn=_ignore_ctrl_c if workers > 0 else None)


def _to_device(ds: ImageFiles, x, rt) -> torch.Tensor:
    """A batch (or the parts a transform collates, e.g. images and erasing boxes) moved, then finished there."""
    x = [t.to(rt.device, non_blocking=True) for t in x] if isinstance(x, list) else x.to(rt.device, non_blocking=True)
    x = ds.transform.on_device(x)
    return x.contiguous(memory_format=rt.memory_format)


class FolderTrainLoader:
    """Yields per step a list of grad_accum micro-batches already on the device (TensorTrainLoader's contract)."""

    def __init__(self, dataset: ImageFiles, rt, *, global_batch: int, accum: int, seed: int, drop_last: bool,
                 workers: int, prefetch: int = 4, mix=None, ra_reps: int = 1):
        check_batch(global_batch, rt.world_size, accum, ra_reps)
        self.plan = TrainPlan(len(dataset), global_batch, rt.world_size, drop_last, ra_reps)
        if self.plan.steps == 0:
            raise DataError(f"train.batch_size={global_batch} is larger than the {len(dataset)} training images")
        self.ds, self.rt, self.accum, self.mix = dataset, rt, accum, mix  # mix: a mixing.BatchMix, on the device
        self.sampler = EpochBatches(self.plan, rt.rank, seed, dataset.transform.draw, lead=mix is not None)
        self.loader = _loader(dataset, self.sampler, workers, rt, prefetch)

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_step)

    def __iter__(self):
        for step, (x, y) in enumerate(self.loader, self.sampler.start_step):
            x, y = _to_device(self.ds, x, self.rt), y.to(self.rt.device, non_blocking=True)
            if self.mix is not None:
                x, y = self.mix(x, y, self.sampler.epoch, step)
            yield list(zip(x.tensor_split(self.accum), y.tensor_split(self.accum)))


class FolderEvalLoader:
    """Unpadded eval shard: every file of the split is evaluated exactly once over all ranks."""

    def __init__(self, dataset: ImageFiles, rt, *, batch_size: int, workers: int):
        idx = eval_shard(len(dataset), rt.world_size, rt.rank).tolist()
        per_rank = max(1, batch_size // rt.world_size)
        self.batches = [[(i, None) for i in idx[s:s + per_rank]] for s in range(0, len(idx), per_rank)]
        self.ds, self.rt, self.total = dataset, rt, len(dataset)
        self.loader = _loader(dataset, self.batches, workers, rt)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for x, y in self.loader:
            yield _to_device(self.ds, x, self.rt), y.to(self.rt.device, non_blocking=True)

    def head(self, n: int) -> torch.Tensor:
        """The first n images of the split (global order: the same on every rank), decoded here."""
        collate = getattr(self.ds.transform, "collate", None) or default_collate
        return _to_device(self.ds, collate([self.ds[(i, None)] for i in range(min(n, self.total))])[0], self.rt)
