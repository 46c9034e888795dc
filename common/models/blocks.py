"""The blocks of a model: the units an engine shards (engine=fsdp) and recomputes in backward
(train.activation_checkpointing), found from the module tree alone so every recipe works unchanged.

A block is the first module on the way down from the root that is one of:
  * a module type used more than once that has sub-modules with parameters: residual blocks
    (BasicBlock, Bottleneck), torchvision's encoder layers, timm's ViT blocks, Maxout units;
    except a stage, one that holds a Sequential or ModuleList of modules with such sub-modules
    (timm's ConvNeXt and Swin stages, unlike an Inception block's branches of conv + norm pairs):
    its blocks are found inside it;
  * an entry of a ModuleList: the levels of a U-Net (pix2pix keeps one per resolution);
  * a convolution or linear layer in a flat Sequential (one made of single layers only): the
    conv layers of VGG and DCGAN, the layers of an MLP.
A single layer is a module whose parameters are all its own (a conv, a norm with its activation).
Nothing inside a block is a block, and modules without parameters are never blocks. The
root is not a block: the engine treats it (and what no block holds, e.g. BatchNorm
layers of a flat stack, the classifier head) on its own.
"""
from __future__ import annotations

import contextlib
import functools
from collections import Counter

import torch.nn as nn
from torch.utils.checkpoint import checkpoint

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def _single_layer(m: nn.Module) -> bool:
    return not any(_has_params(c) for c in m.children())


def _depth(m: nn.Module) -> int:
    """1 for a single layer, 2 for a module of single layers (conv + norm), 3 for a block of those, ..."""
    return 1 + max((_depth(c) for c in m.children() if _has_params(c)), default=0)


def _is_stage(m: nn.Module) -> bool:
    """m holds a Sequential or ModuleList of modules deeper than a conv + norm pair: a sequence of blocks."""
    return any(isinstance(c, CONTAINERS) and any(_depth(e) >= 3 for e in c.children()) for c in m.children())


def _is_block(child: nn.Module, parent: nn.Module, counts: Counter) -> bool:
    if isinstance(parent, nn.ModuleList):
        return True
    if isinstance(child, CONTAINERS):
        return False  # a stage: look inside it
    if _single_layer(child):
        flat = isinstance(parent, nn.Sequential) and all(_single_layer(c) for c in parent)
        return flat and isinstance(child, LAYERS)
    return counts[type(child)] > 1 and not _is_stage(child)


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of `model` in module order (see the module docstring)."""
    counts = Counter(type(m) for m in model.modules())
    found = []

    def visit(parent: nn.Module) -> None:
        for child in parent.children():
            if not _has_params(child):
                continue
            if _is_block(child, parent, counts):
                found.append(child)
            else:
                visit(child)
    visit(model)
    return found


@contextlib.contextmanager
def _keep_running_stats(block: nn.Module):
    """The recomputation in backward runs BatchNorm in training mode a second time; without this its
    running statistics (and num_batches_tracked) would be updated twice per step."""
    saved = [(b, b.clone()) for m in block.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             for b in m.buffers()]
    try:
        yield
    finally:
        for b, value in saved:
            b.copy_(value)


def checkpoint_blocks(model: nn.Module) -> int:
    """Recompute each block's forward in backward instead of keeping its activations
    (torch.utils.checkpoint, non-reentrant; RNG state is replayed, so dropout masks match).
    The forward is replaced on the instance: state_dict keys stay the same. Returns the block count."""
    blocks = find_blocks(model)
    for block in blocks:
        inner = block.forward
        recompute = functools.partial(lambda b: (contextlib.nullcontext(), _keep_running_stats(b)), block)
        block.forward = functools.partial(checkpoint, inner, use_reentrant=False, context_fn=recompute)
    return len(blocks)
