"""Exact, distributed evaluation metrics: local sums, one all-reduce, count checked."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy in percent; soft targets (MixUp/CutMix) count their largest class."""
    target = y.argmax(1) if y.ndim == 2 else y
    return (logits.argmax(1) == target).float().mean() * 100


def classify(model, rt, x: torch.Tensor, tta_flip: bool = False) -> torch.Tensor:
    """float32 logits of a batch as evaluation computes them (rt's autocast; with tta_flip the mean of the
    image's and its mirror image's). Evaluation and --predict both call this."""
    with rt.autocast():
        logits = model(x).float()
        if tta_flip:
            logits = (logits + model(x.flip(3)).float()) / 2
    return logits


@torch.no_grad()
def evaluate_classifier(model, rt, loader, tta_flip: bool = False) -> dict[str, float]:
    """Loss, top-1 and (with more than 5 classes) top-5 accuracy over the whole eval split, each
    sample counted once.

    Each rank sums over its unpadded shard; one all-reduce adds the shards; the total
    count must equal the dataset size, or the sharding is wrong and we say so.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, device=rt.device, dtype=torch.float64)  # loss sum, correct, count, top-5 correct, top-5 batches
    for x, y in loader:
        logits = classify(model, rt, x, tta_flip)
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += len(y)
        if logits.shape[1] > 5:  # counted in the same all-reduce, so a rank with an empty shard agrees
            sums[3] += (logits.topk(5, dim=1).indices == y[:, None]).any(1).sum()
            sums[4] += 1
    model.train(was_training)
    loss, correct, count, correct5, top5 = rt.all_reduce_sum(sums).tolist()
    if int(count) != loader.total:
        raise RuntimeError(f"evaluation saw {int(count)} samples, the split has {loader.total}: sharding bug")
    return {"loss": loss / count, "acc1": 100.0 * correct / count, **({"acc5": 100.0 * correct5 / count} if top5 else {})}
