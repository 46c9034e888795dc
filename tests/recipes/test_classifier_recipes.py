"""Every classifier recipe's debug config trains under python and torchrun (2 procs, gloo)."""
import math

import pytest
import torch

from helpers import final_weights, metrics, run_recipe

RECIPES = ["mnist_mlp", "mnist_cnn", "resnet_cifar"]


@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("recipe", RECIPES)
def test_debug_config_trains(recipe, nproc, tmp_path):
    out = tmp_path / "run"
    run_recipe(recipe, f"out_dir={out}", nproc=nproc)
    rows = metrics(out)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert train and val, rows
    assert all(math.isfinite(r["loss"]) for r in rows)
    # A few steps on learnable synthetic data: the loss must go down.
    assert train[-1]["loss"] < train[0]["loss"], [r["loss"] for r in train]
    assert all(r["samples_per_s"] > 0 and "lr" in r for r in train)
    assert {"loss", "acc1"} <= set(val[-1])
    # Run directory contract.
    assert (out / "config.yaml").is_file() and any((out / "tb").iterdir())
    weights = final_weights(out)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in weights), list(weights)[:3]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_resnet_archs_have_the_published_depths():
    import importlib.util
    from helpers import ROOT

    spec = importlib.util.spec_from_file_location("resnet_cifar", ROOT / "recipes" / "resnet_cifar.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # ResNet-20/32/56 have about 0.27M/0.46M/0.85M parameters (He et al. 2016, Table 6); ResNet-18 11.2M.
    expect = {"resnet20": 0.27e6, "resnet32": 0.46e6, "resnet56": 0.85e6, "resnet18": 11.2e6}
    for arch, n in expect.items():
        model = mod.build_model(mod.ModelConfig(arch=arch), (3, 32, 32), 10)
        params = sum(p.numel() for p in model.parameters())
        assert abs(params - n) / n < 0.05, (arch, params)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len(convs) + 1 == {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet18": 18}[arch]
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
