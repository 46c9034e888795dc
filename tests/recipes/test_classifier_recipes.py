"""Every classifier recipe's debug config trains under python and torchrun (2 procs, gloo)."""
import math

import pytest
import torch

from common.models.resnet import ResNetConfig, SqueezeExcite
from support.inprocess import run_inprocess
from support.runs import load_recipe, run_recipe
from support.outputs import final_weights, metrics

RECIPES = ["mnist_mlp", "mnist_cnn", "resnet_cifar", "senet_cifar", "vgg_cifar", "lenet_cifar"]
# Every recipe under python; under torchrun mnist_cnn and resnet_cifar (the MNIST and CIFAR data and loop), the rest heavy.
CASES = [pytest.param(r, n, marks=pytest.mark.heavy) if n == 2 and r not in ("mnist_cnn", "resnet_cifar")
         else (r, n) for r in RECIPES for n in (1, 2)]


@pytest.mark.parametrize("recipe,nproc", CASES, ids=[f"{r}-{n}" for r in RECIPES for n in (1, 2)])
def test_debug_config_trains(recipe, nproc, tmp_path):
    out = tmp_path / "run"
    run_recipe(recipe, f"out_dir={out}", nproc=nproc) if nproc > 1 else run_inprocess(recipe, f"out_dir={out}")
    rows = metrics(out)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert train and val, rows
    assert all(math.isfinite(r["loss"]) for r in train + val)
    assert rows[-1]["split"] == "end" and rows[-1]["status"] == "finished"  # how the run ended: the last row
    # A few steps on learnable synthetic data: the loss must go down.
    assert train[-1]["loss"] < train[0]["loss"], [r["loss"] for r in train]
    assert all(r["samples_per_s"] > 0 and "lr" in r and not any(k.startswith("lr/") for k in r) for r in train)
    assert {"loss", "acc1"} <= set(val[-1])
    # Run directory contract.
    assert (out / "config.yaml").is_file() and any((out / "tb").iterdir())
    weights = final_weights(out)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in weights), list(weights)[:3]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_resnet_archs_have_the_published_depths():
    mod = load_recipe("resnet_cifar")
    # ResNet-20/32/56 have about 0.27M/0.46M/0.85M parameters (He et al. 2016, Table 6); ResNet-18 11.2M.
    expect = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet56": 0.85e6, "resnet18": 11.2e6}
    for arch, n in expect.items():
        model = mod.build_model(ResNetConfig(arch=arch), (3, 32, 32), 10)
        params = sum(p.numel() for p in model.parameters())
        assert abs(params - n) / n < 0.05, (arch, params)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len(convs) + 1 == {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet18": 18}[arch]
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_se_block_gates_channels_in_zero_one():
    se = SqueezeExcite(32, reduction=16)
    assert se.fc1.out_features == 2  # C / r
    x = torch.randn(4, 32, 8, 8).abs() + 0.1
    y = se(x)
    assert y.shape == x.shape
    gate = y / x  # per-channel factor, constant over space
    assert torch.allclose(gate, gate[:, :, :1, :1].expand_as(gate), atol=1e-6)
    assert (gate > 0).all() and (gate < 1).all()


@pytest.mark.parametrize("depth,convs", [(11, 8), (13, 10), (16, 13), (19, 16)])
def test_vgg_depths(depth, convs):
    mod = load_recipe("vgg_cifar")
    model = mod.build_model(mod.ModelConfig(depth=depth), (1, 32, 32), 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == convs
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == convs
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_lenet_shapes():
    mod = load_recipe("lenet_cifar")
    model = mod.build_model(mod.ModelConfig(), (3, 32, 32), 10)
    assert [m.in_features for m in model if isinstance(m, torch.nn.Linear)] == [400, 120, 84]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
