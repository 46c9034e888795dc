"""Dataset readers on files generated in the real formats (IDX .gz, CIFAR python pickles)."""
import gzip
import pickle
import struct

import numpy as np
import pytest

from common.config import DataConfig
from common.data.datasets import DataError, load_split, read_idx


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_mnist(root, n_train=20, n_test=10):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)
        arrays[prefix] = (x, y)
    return arrays


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_mnist_like_from_idx_files(tmp_path, layout):
    d = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    d.mkdir(parents=True, exist_ok=True)
    arrays = make_mnist(d)
    x, y = load_split(DataConfig(name="mnist", root=str(tmp_path)), "test")
    assert x.shape == (10, 1, 28, 28) and x.dtype.is_floating_point is False
    assert (x[:, 0].numpy() == arrays["t10k"][0]).all() and (y.numpy() == arrays["t10k"][1]).all()


def test_truncated_idx_is_named(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros((4, 3, 3)))
    raw = gzip.open(tmp_path / "a.gz").read()
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b.gz")


def test_cifar10_from_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [1, 2, 3, 4]}, f)
    x, y = load_split(DataConfig(name="cifar10", root=str(tmp_path)), "train")
    assert x.shape == (20, 3, 32, 32) and y.tolist() == [1, 2, 3, 4] * 5


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_missing_dataset_says_what_to_do(tmp_path, name):
    with pytest.raises(DataError) as e:
        load_split(DataConfig(name=name, root=str(tmp_path)), "train")
    msg = str(e.value)
    assert "not found under" in msg and "data.download=true" in msg and "data.name=synthetic" in msg


def test_real_fashion_mnist_if_installed():
    """Debian's dataset-fashion-mnist is found without any data.root setting."""
    import pathlib
    if not pathlib.Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("apt-get install dataset-fashion-mnist for this check")
    x, y = load_split(DataConfig(name="fashion_mnist", root="does-not-exist"), "test")
    assert x.shape == (10_000, 1, 28, 28) and sorted(set(y.tolist())) == list(range(10))
