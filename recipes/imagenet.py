"""Any torchvision classifier (ResNet-50, VGG-16, AlexNet, GoogLeNet, ...) or timm model on an ImageFolder tree.

This is the recipe to take to a multi-node cluster: images stream from disk through worker
processes with pinned memory and persistent workers, through torchvision's reference presets
(transforms.v2; docs/data.md): RandomResizedCrop(data.train_crop) + flip + data.auto_augment
(autoaugment, randaugment, ta_wide, augmix) + RandomErasing(data.random_erase) for training,
Resize(data.val_resize) + CenterCrop(data.val_crop) for eval, in data.interpolation (bilinear, bicubic).
data.decode=gpu decodes the JPEGs on the GPU instead (nvJPEG, same crops; docs/data.md).
data.image_size sets both crops. data.root holds train/ and val/ with one sub-directory per class.

Reference schedule (torchvision's ResNet-50 recipe): 90 epochs, global batch 256, SGD 0.1,
momentum 0.9, weight decay 1e-4, LR x0.1 at epochs 30 and 60: about 76.1% top-1 on ImageNet-1k.
Not measured by this project (no ImageNet here); see docs/results.md.

    torchrun --nproc_per_node=8 recipes/imagenet.py data.root=/datasets/imagenet model.name=resnet50
    sbatch slurm/multi_node.sbatch recipes/imagenet.py data.root=/datasets/imagenet
    python recipes/imagenet.py data.root=path/to/tree model.name=resnet18 data.image_size=64
    python recipes/imagenet.py data.root=path/to/tree model.name=resnet18 model.pretrained=true   # fine-tune
    python recipes/imagenet.py data.root=path/to/tree data.auto_augment=ta_wide data.random_erase=0.1
    python recipes/imagenet.py data.root=path/to/tree data.train_crop=176 data.val_resize=232 data.val_crop=224  # FixRes
    torchrun --nproc_per_node=8 recipes/imagenet.py data.root=/datasets/imagenet model.name=timm:convnext_tiny \
        model.drop_path=0.1 optim.name=adamw optim.lr=4e-3 optim.weight_decay=0.05 engine=fsdp

model.pretrained=true starts from torchvision's ImageNet weights, read from the torch hub cache
(common/models/pretrained.py: a missing file is an error naming it; model.pretrained_download=true fetches it);
with another class count the classifier head keeps its fresh initialisation, and the start says so.
model.name=timm:<name> builds any timm model (common/models/timm_models.py); its pretrained weights are
read from the Hugging Face hub cache timm fills, offline, in the same way.
"""
from dataclasses import dataclass, field

import torchvision

from common.config import ConfigError
from common.fields import IGNORED, NOT_COMPARED, ranged, setting
from common.data.folder import FolderDataConfig, imagefolder_data
from common.models import timm_models
from common.models.pretrained import load_pretrained
from common.tasks import classifier

# Nets whose auxiliary heads return tuples in training mode; one loss head is enough here.
NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True}, "inception_v3": {"aux_logits": False, "init_weights": True}}


@dataclass
class ModelConfig:
    name: str = "resnet50"  # a torchvision.models classifier (resnet50, vgg16_bn, ...) or timm:<name> (timm:convnext_tiny, ...)
    drop_path: float = ranged(0.0, ge=0, lt=1, evaluate=IGNORED)  # timm models: stochastic depth rate (timm's drop_path_rate); 0 = off
    pretrained: bool = setting(False, resume=NOT_COMPARED, evaluate=IGNORED)  # start from torchvision's or timm's ImageNet weights in the local cache (docs/usage.md)
    pretrained_download: bool = setting(False, resume=NOT_COMPARED, evaluate=IGNORED, read_when="model.pretrained=true")  # model.pretrained: download the weights into the cache when missing (needs internet)


@dataclass
class Config(classifier.ClassifierConfig):
    data: FolderDataConfig = field(default_factory=FolderDataConfig)  # torchvision's presets (docs/data.md)
    model: ModelConfig = field(default_factory=ModelConfig)


def build_model(m: ModelConfig, in_shape, num_classes: int):
    if m.name.startswith(timm_models.PREFIX):
        return timm_models.build(m.name[len(timm_models.PREFIX):], in_shape, num_classes, m.drop_path,
                                 m.pretrained, m.pretrained_download)
    if m.drop_path:
        raise ConfigError(f"model.drop_path={m.drop_path} is read by timm models only; set it to 0 for {m.name}")
    if m.name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"model.name={m.name!r} is not a torchvision classifier (torchvision.models.list_models() lists them); "
                          "timm's models are model.name=timm:<name>")
    model = torchvision.models.get_model(m.name, weights=None, num_classes=num_classes, **NO_AUX.get(m.name, {}))
    if m.pretrained:
        load_pretrained(model, m.name, m.pretrained_download)
    return model


task = classifier.Classifier(Config, build_model, __file__, train_step=classifier.train_step,
                             build_data=imagefolder_data)


if __name__ == "__main__":
    task.main()
