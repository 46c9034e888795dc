"""Any torchvision classifier (ResNet-50, VGG-16, AlexNet, GoogLeNet, ...) on an ImageFolder tree.

This is the recipe to take to a multi-node cluster: images stream from disk through worker
processes with pinned memory and persistent workers, augmented with torchvision's reference
presets (RandomResizedCrop + flip for training; resize to size/0.875 + center crop for eval).
data.root holds train/ and val/ with one sub-directory per class (the ImageNet layout).

Reference schedule (torchvision's ResNet-50 recipe): 90 epochs, global batch 256, SGD 0.1,
momentum 0.9, weight decay 1e-4, LR x0.1 at epochs 30 and 60: about 76.1% top-1 on ImageNet-1k.
Not measured by this project (no ImageNet here); see the README's results table.

    torchrun --nproc_per_node=8 recipes/imagenet.py data.root=/datasets/imagenet model.name=resnet50
    sbatch slurm/multi_node.sbatch recipes/imagenet.py data.root=/datasets/imagenet
    python recipes/imagenet.py data.root=path/to/tree model.name=resnet18 data.image_size=64
"""
from dataclasses import dataclass, field

import torch.nn.functional as F
import torchvision

from common.config import BaseConfig, ConfigError, DataConfig, parse_cli
from common.engines import make_runtime
from common.folder import imagefolder_data
from common.loop import fit, total_steps
from common.metrics import accuracy, evaluate_classifier
from common.optim import build_optimizer, build_scheduler
from common.state import TrainState

# Nets whose auxiliary heads return tuples in training mode; one loss head is enough here.
NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True}, "inception_v3": {"aux_logits": False, "init_weights": True}}


@dataclass
class FolderDataConfig(DataConfig):
    name: str = "imagefolder"  # this recipe reads data.root/train and data.root/val
    root: str = "data/imagenet"  # dataset directory with train/ and val/ class sub-directories
    image_size: int = 224  # training crop and eval crop side, pixels
    workers: int = 8  # decoding worker processes per rank (persistent, pinned memory)


@dataclass
class ModelConfig:
    name: str = "resnet50"  # any torchvision.models classifier name: resnet50, vgg16_bn, alexnet, googlenet, ...


@dataclass
class Config(BaseConfig):
    data: FolderDataConfig = field(default_factory=FolderDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    label_smoothing: float = 0.0  # cross-entropy label smoothing


def build_model(m: ModelConfig, num_classes: int):
    if m.name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"model.name={m.name!r} is not a torchvision classifier; see torchvision.models.list_models()")
    return torchvision.models.get_model(m.name, weights=None, num_classes=num_classes, **NO_AUX.get(m.name, {}))


def build_state(cfg: Config, rt, loaders) -> TrainState:
    rt.seed()
    model = rt.wrap(build_model(cfg.model, loaders.num_classes))
    opt = build_optimizer(cfg.optim, model)
    sched = build_scheduler(cfg.optim, opt, total_steps(cfg, loaders.train))
    state = TrainState(models={"net": model}, optims={"net": opt}, scheds={"net": sched})
    state.add_ema("net", cfg.train.ema_decay)
    return state


def train_step(batch, state: TrainState, rt) -> dict:
    x, y = batch
    with rt.autocast():
        logits = state.models["net"](x)
        loss = F.cross_entropy(logits, y, label_smoothing=rt.cfg.label_smoothing)
    rt.backward(loss)
    rt.step(state.optims["net"])
    return {"loss": loss.detach(), "acc1": accuracy(logits.detach(), y)}


def evaluate(state: TrainState, rt, loader) -> dict:
    return evaluate_classifier(state.eval_model("net"), rt, loader)


def main(argv=None):
    cli = parse_cli(Config, __file__, argv)
    with make_runtime(cli.cfg, cli.recipe) as rt:
        if cli.dry_run:
            return rt.dry_run()
        loaders = imagefolder_data(cli.cfg, rt)
        state = build_state(cli.cfg, rt, loaders)
        return fit(cli.cfg, state, rt, loaders, train_step, evaluate)


if __name__ == "__main__":
    from common.entry import run
    run(main)
