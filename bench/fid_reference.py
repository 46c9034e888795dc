"""Reference points for val/fd: Fréchet distances between *real* Fashion-MNIST sets in the judge's features.

A generator's val/fd means little alone; this prints the floor (real train images vs the real test
images the recipes compare against) and what simple damage to real images costs, with the same
judge, sample count and code path as the recipes (common/metrics/fid.py).

    python bench/fid_reference.py                                # the GANs' first-use judge (trained if missing)
    python bench/fid_reference.py runs/fid_classifier 5000      # a judge in an mnist_cnn run directory
"""
import sys

import torch
import torch.nn.functional as F

from common.config import BaseConfig, DataConfig
from common.data.datasets import load_split
from common.train.runtime import runtime
from common.metrics.fid import frechet_distance, load_judge
from common.tasks.judge import auto_judge


def gaussian(judge, rt, images: torch.Tensor, labels=None):
    acc = judge.stats()
    for i in range(0, len(images), 1000):
        acc.add(images[i:i + 1000], None if labels is None else labels[i:i + 1000])
    return acc.reduce(rt)


def reference_rows(judge, rt, n: int = 10000):
    """(the judge's accuracy on the n real test images, [(name, FD to them)]): rows in the order of
    the 5-epoch judge's FDs, lowest first (docs/generative.md)."""
    data = DataConfig(name="fashion_mnist")
    to_tanh = lambda u8: u8.float() / 127.5 - 1  # noqa: E731
    test_x, test_y = load_split(data, "test")
    train_x, _ = load_split(data, "train")
    test, train = to_tanh(test_x[:n]), to_tanh(train_x[:n])
    ref = gaussian(judge, rt, test, test_y[:n])
    blur = F.avg_pool2d(F.pad(test, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    g = torch.Generator().manual_seed(0)
    rows = [("real train images (the floor)", train),
            ("test images + N(0, 0.1) noise", (test + 0.1 * torch.randn(test.shape, generator=g)).clamp(-1, 1)),
            ("test images, 3x3 box blur", blur),
            ("test images shifted 2 px right", torch.roll(test, 2, dims=-1)),
            ("test images + N(0, 0.5) noise", (test + 0.5 * torch.randn(test.shape, generator=g)).clamp(-1, 1))]
    return ref.acc, [(name, frechet_distance(ref, gaussian(judge, rt, images))) for name, images in rows]


def main():
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    with runtime(BaseConfig(device="cpu")) as rt:
        judge = load_judge(sys.argv[1] if len(sys.argv) > 1 else auto_judge(rt), rt.device)
        acc, rows = reference_rows(judge, rt, n)
        print(f"judge: {judge.source}; {n} test images; judge accuracy on them {acc:.2f}%")
        for name, fd in rows:
            print(f"FD(real test, {name}): {fd:.2f}")


if __name__ == "__main__":
    main()
