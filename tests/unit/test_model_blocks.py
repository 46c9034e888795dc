"""find_blocks on real timm and torchvision models: the units engine=fsdp shards and activation
checkpointing recomputes are each model's own blocks, neither whole stages nor single layers."""
import timm
import torch.nn as nn
import torchvision

from common.models.blocks import find_blocks


def block_names(model: nn.Module) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(b)] for b in find_blocks(model)]


def test_timm_resnet_blocks_are_its_residual_blocks():
    assert block_names(timm.create_model("resnet18")) == [f"layer{i}.{j}" for i in (1, 2, 3, 4) for j in (0, 1)]


def test_timm_vit_blocks_are_its_transformer_blocks():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32)
    assert block_names(model) == [f"blocks.{i}" for i in range(12)]


def test_timm_convnext_blocks_are_inside_its_stages():
    """A ConvNeXt stage holds a downsampling layer and a Sequential of blocks: the blocks are the units,
    not the stage (whose sizes differ threefold), and each stage's downsampling conv is one of its own."""
    model = timm.create_model("convnext_atto")
    names = block_names(model)
    inner = [n for n, m in model.named_modules() if type(m).__name__ == "ConvNeXtBlock"]
    assert len(inner) == sum(len(model.stages[i].blocks) for i in range(4)) == 12
    assert names == ["stem.0", *[n for n in inner if n.startswith("stages.0.")],
                     *[n for i in (1, 2, 3) for n in [f"stages.{i}.downsample.1"] + [b for b in inner if b.startswith(f"stages.{i}.")]]]
    assert isinstance(model.get_submodule("stages.1.downsample.1"), nn.Conv2d)


def test_a_norm_with_its_activation_is_a_single_layer():
    """timm's BatchNormAct2d holds its activation as a sub-module without parameters: a norm, never a block."""
    names = block_names(timm.create_model("mobilenetv3_small_100"))
    assert not any(n.endswith(("bn1", "bn2")) for n in names) and "blocks.1.0" in names


def test_torchvision_blocks_are_unchanged_by_the_stage_rule():
    """An Inception block's branches are Sequentials of conv + norm pairs, not of blocks: it stays one block;
    so do MobileNet's inverted residuals, whose Sequential holds conv + norm + activation units."""
    googlenet = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    assert block_names(googlenet)[3:] == ["inception3a", "inception3b", *[f"inception4{c}" for c in "abcde"],
                                          "inception5a", "inception5b"]
    mobilenet = block_names(torchvision.models.mobilenet_v2())
    assert mobilenet[:3] == ["features.0.0", "features.1", "features.2"] and "features.17" in mobilenet
