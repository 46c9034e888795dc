"""The image-classification task every classifier recipe shares: config, state, step, evaluation, entry.

A classifier recipe declares its Config (a ClassifierConfig with its `model` section) and
`build_model(model_cfg, in_shape, num_classes)`, and hands both to Classifier with its own
__file__; everything else is here, once (docs/usage.md, "Writing a recipe").

The step is cross-entropy (label smoothing, MixUp/CutMix soft targets) with top-1 accuracy;
a recipe whose model needs another step subclasses Classifier and overrides train_step.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from common.config import BaseConfig, DataConfig, TrainConfig, ranged
from common.fields import APPLIED, IGNORED, Fixed, setting
from common.data.classifier_data import classification_data
from common.models.size import within_memory
from common.entry import exit_after, run
from common.metrics.classify import accuracy, evaluate_classifier
from common.train.loop import total_steps
from common.train.state import TrainState, build_state


@dataclass
class ClassifierDataConfig(DataConfig):
    name: str = "fashion_mnist"  # mnist | fashion_mnist | cifar10 | cifar100 | synthetic | folder (docs/data.md)
    folder_shape: list[int] = ranged(factory=lambda: [3, 32, 32], length=3, ge=1, read_when="data.name=folder")  # data.name=folder: C, H, W the images are converted to (grey for C=1), resized and centre-cropped
    pad_to: int = ranged(0, ge=0, resume=Fixed("the input shape"))  # zero-pad images to this square size (e.g. 32 for 28x28 data on CIFAR nets); 0 = off
    mixup_alpha: float = ranged(0.0, ge=0, evaluate=IGNORED)  # MixUp Beta(alpha, alpha) on training batches (soft targets); 0 = off
    cutmix_alpha: float = ranged(0.0, ge=0, evaluate=IGNORED)  # CutMix Beta(alpha, alpha); with MixUp too, each batch picks one at random; 0 = off


@dataclass
class ClassifierTrainConfig(TrainConfig):
    tta_flip: bool = setting(False, evaluate=APPLIED)  # evaluate on the mean logits of each image and its mirror image


@dataclass
class ClassifierConfig(BaseConfig):
    data: ClassifierDataConfig = field(default_factory=ClassifierDataConfig)
    train: ClassifierTrainConfig = field(default_factory=ClassifierTrainConfig)
    label_smoothing: float = ranged(0.0, ge=0, lt=1)  # cross-entropy label smoothing


class Classifier:
    """The task interface the entry point, tests and benchmarks use for every recipe:
    Config, build_data, build_state, train_step, evaluate, main (and for --evaluate, --export and
    load_model: build_models, exported)."""

    exported = "net"  # the model --export writes

    def __init__(self, Config: type, build_model, script: str, build_data=classification_data):
        """script: the recipe's __file__ (its name goes into checkpoints; configs/<name>.yaml is its base)."""
        self.Config, self.build_model, self.script, self._build_data = Config, build_model, script, build_data

    def build_data(self, cfg, rt, **saved):
        """saved: what a trained model's checkpoint says of its data (`classes`, an image folder's labels;
        `stats`, the inputs' normalisation), for the data builders that read them."""
        return self._build_data(cfg, rt, **saved)

    @within_memory
    def build_models(self, cfg, loaders) -> dict:
        return {"net": self.build_model(cfg.model, loaders.shape, loaders.num_classes)}

    def build_state(self, cfg, rt, loaders) -> TrainState:
        rt.seed()
        return build_state(cfg, rt, self.build_models(cfg, loaders), total_steps(cfg, loaders.train), ema=("net",))

    def train_step(self, batch, state: TrainState, rt) -> dict:
        x, y = batch
        with rt.autocast():
            logits = state.models["net"](x)
            loss = F.cross_entropy(logits, y, label_smoothing=rt.cfg.label_smoothing)
        rt.backward(loss)
        rt.step(state.optims["net"])
        return {"loss": loss.detach(), "acc1": accuracy(logits.detach(), y)}

    def evaluate(self, state: TrainState, rt, loader) -> dict:
        return evaluate_classifier(state.eval_model("net"), rt, loader, tta_flip=rt.cfg.train.tta_flip)

    def main(self, argv=None):
        """The script's entry: run, then end the process with the run's exit code (common/entry.py)."""
        exit_after(lambda: run(self, self.script, argv))
