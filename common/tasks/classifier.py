"""The image-classification task every classifier recipe shares: config, the cross-entropy step, evaluation.

A classifier recipe declares its Config (a ClassifierConfig with its `model` section) and
`build_model(model_cfg, in_shape, num_classes)`, and hands both to Classifier with its own
__file__ and the step it trains with: this module's train_step, or its own
train_step(cfg, batch, state, rt). Classifier returns the recipe's Task (common/entry.py;
docs/usage.md, "Writing a recipe").
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from common.config import BaseConfig, DataConfig, TrainConfig, ranged
from common.fields import APPLIED, IGNORED, Fixed, setting
from common.data.augment_config import AugmentConfig
from common.data.classifier_data import classification_data
from common.models.size import within_memory
from common.entry import Task
from common.metrics.classify import accuracy, evaluate_classifier
from common.train.state import TrainState


@dataclass
class ClassifierDataConfig(AugmentConfig, DataConfig):
    name: str = "fashion_mnist"  # mnist | fashion_mnist | cifar10 | cifar100 | synthetic | folder | shards (docs/data.md)
    folder_shape: list[int] = ranged(factory=lambda: [3, 32, 32], length=3, ge=1, read_when="data.name=folder")  # data.name=folder, shards: C, H, W the images are made (grey for C=1), resized and centre-cropped
    shard_cache: str = setting("", evaluate=APPLIED, read_when="data.name=shards")  # data.name=shards from URLs: where a node copies the shards; "" = ~/.cache/dtrain/shards
    pad_to: int = ranged(0, ge=0, resume=Fixed("the input shape"))  # zero-pad images to this square size (e.g. 32 for 28x28 data on CIFAR nets); 0 = off


@dataclass
class ClassifierTrainConfig(TrainConfig):
    tta_flip: bool = setting(False, evaluate=APPLIED)  # evaluate on the mean logits of each image and its mirror image


@dataclass
class ClassifierConfig(BaseConfig):
    data: ClassifierDataConfig = field(default_factory=ClassifierDataConfig)
    train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)
    label_smoothing: float = ranged(0.0, ge=0, lt=1)  # cross-entropy label smoothing


def train_step(cfg, batch, state: TrainState, rt) -> dict:
    """Cross-entropy on one micro-batch (label smoothing; MixUp/CutMix soft targets), top-1 accuracy."""
    x, y = batch
    with rt.autocast():
        logits = state.models["net"](x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    rt.backward(loss)
    rt.step(state.optims["net"])
    return {"loss": loss.detach(), "acc1": accuracy(logits.detach(), y)}


def evaluate_accuracy(cfg, state: TrainState, rt, loader) -> dict:
    """Loss, top-1 and top-5 accuracy of the EMA weights (else the model's) over the whole eval split."""
    return evaluate_classifier(state.eval_model("net"), rt, loader, tta_flip=cfg.train.tta_flip)


METRICS = {"val/loss": "min", "val/acc1": "max", "val/acc5": "max"}  # evaluate_accuracy's (acc5 with over 5 classes)


def Classifier(Config: type, build_model, script: str, *, train_step, evaluate=evaluate_accuracy,
               build_data=classification_data, metrics=METRICS) -> Task:
    """A classifier recipe's Task: its one model "net" = build_model(cfg.model, in_shape, num_classes),
    the train_step it names, evaluate (default: loss and accuracy on the eval split) and
    build_data(cfg, rt, **saved) (default: the in-memory datasets and image folders of cfg.data) and the
    metrics its evaluate logs, each with whether larger or smaller is better."""
    @within_memory
    def build_models(cfg, loaders) -> dict:
        return {"net": build_model(cfg.model, loaders.shape, loaders.num_classes)}

    return Task(Config, script, build_data, build_models, train_step, evaluate,
                ema=("net",), exported="net", metrics=metrics)
