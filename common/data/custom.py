"""A user's own torch.utils.data.Dataset as a classifier's data, sharded and resumable like the built-in sets.

    task = classifier.Classifier(Config, build_model, __file__, train_step=classifier.train_step,
                                 build_data=dataset_data(make_dataset))

`make_dataset(cfg, split)` returns a map-style Dataset for split "train" or "val" whose items are
(float image tensor [C, H, W], int label). The loaders are common/data/streaming.py's: the sampler
shards every global batch over the ranks by TrainPlan (drop_last handled as for every recipe), the
order depends only on (seed, epoch), a resume continues at the step it stopped, and evaluation counts
every sample of "val" exactly once. Random transforms inside the Dataset (torchvision's, or anything
drawing from torch's RNG) get a seed per sample by epoch position, so they too repeat after a resume.
See docs/data.md, "Your own Dataset".
"""
from __future__ import annotations

from torch.utils.data import Dataset

from common.config import ConfigError
from common.data.augment_config import AugmentConfig
from common.data.files import DataError
from common.data.mixing import batch_mix
from common.data.classifier_data import Loaders
from common.data.streaming import FolderEvalLoader, FolderTrainLoader
from common.data.transforms import Seeded


class Indexed(Dataset):
    """The loaders' item (index, seed) -> the user dataset's (image, label) at that index, seeded. The label
    is checked here, in the loader (a worker process, or the CPU before the batch is copied): a label the
    classifier head has no row for would fail on the device mid-step."""

    def __init__(self, ds: Dataset, train: bool, split: str):
        self.ds, self.transform = ds, Seeded(ds.__getitem__, train)  # a bound method pickles to spawned workers
        self.split, self.classes = split, None  # set once the class count is known

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, item):
        x, y = self.transform(*item)
        y = int(y)
        if self.classes is not None and not 0 <= y < self.classes:
            raise DataError(f"{type(self.ds).__name__} ({self.split}) sample {item[0]} has label {y}, outside "
                             f"[0, {self.classes}) for {self.classes} classes: fix the dataset's labels, or its "
                             "`classes` (or dataset_data(..., num_classes=N))")
        return x, y


def dataset_data(make_dataset, num_classes: int | None = None, workers: int = 2):
    """build_data for Classifier from make_dataset(cfg, split). num_classes: else the train set's
    `classes` (as torchvision datasets have). workers: loader processes per rank (0 = in the training process)."""
    def build_data(cfg, rt) -> Loaders:
        train, val = Indexed(make_dataset(cfg, "train"), True, "train"), Indexed(make_dataset(cfg, "val"), False, "val")
        classes = num_classes or len(getattr(train.ds, "classes", []))
        if not classes:
            raise DataError(f"{type(train.ds).__name__} has no `classes`: pass dataset_data(..., num_classes=N)")
        train.classes = val.classes = classes
        d = cfg.data if isinstance(cfg.data, AugmentConfig) else AugmentConfig()
        if d.auto_augment != "none" or d.random_erase > 0:
            raise ConfigError(f"data.auto_augment={d.auto_augment} data.random_erase={d.random_erase}: a Dataset of "
                              "your own applies its own transforms; put torchvision's policy or RandomErasing in "
                              "make_dataset (they are seeded per sample), or set data.auto_augment=none data.random_erase=0")
        loader = FolderTrainLoader(train, rt, global_batch=cfg.train.batch_size, accum=cfg.train.grad_accum,
                                   seed=cfg.seed, drop_last=cfg.data.drop_last, workers=workers,
                                   mix=batch_mix(d, classes, cfg.seed), ra_reps=d.ra_reps)
        evaluate = FolderEvalLoader(val, rt, batch_size=cfg.train.eval_batch_size, workers=workers)
        return Loaders(loader, evaluate, classes, tuple(train.ds[0][0].shape))
    return build_data
