"""The blocks of a model: the units an engine shards (engine=fsdp) and recomputes in backward
(train.activation_checkpointing), found from the module tree alone so every recipe works unchanged.

A block is the first module on the way down from the root that is one of:
  * a module type used more than once that has sub-modules: residual blocks (BasicBlock,
    Bottleneck), torchvision's encoder layers, Maxout units;
  * an entry of a ModuleList: the levels of a U-Net (pix2pix keeps one per resolution);
  * a convolution or linear layer in a flat Sequential (one made of single layers only): the
    conv layers of VGG and DCGAN, the layers of an MLP.
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


def _is_block(child: nn.Module, parent: nn.Module, counts: Counter) -> bool:
    if isinstance(parent, nn.ModuleList):
        return True
    if isinstance(child, CONTAINERS):
        return False  # a stage: look inside it
    if next(child.children(), None) is None:  # a single layer
        flat = isinstance(parent, nn.Sequential) and all(next(c.children(), None) is None for c in parent)
        return flat and isinstance(child, LAYERS)
    return counts[type(child)] > 1


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
