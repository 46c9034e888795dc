"""imagenet.py model.pretrained=true: torchvision weights from the torch hub cache, never downloaded here.

The weights file is generated: a torchvision model's state_dict saved under the exact name torchvision
would download to, in a temporary TORCH_HOME."""
import pytest
import torch
import torchvision

from support.runs import load_recipe, run_recipe
from common.models.pretrained import weights_file


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path, _, _ = weights_file("resnet18")
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    return path


def _save_weights(path):
    torch.manual_seed(7)
    sd = torchvision.models.resnet18().state_dict()
    path.parent.mkdir(parents=True)
    torch.save(sd, path)
    return sd


def test_pretrained_weights_are_loaded_and_another_head_is_reinitialised(hub, capsys):
    saved = _save_weights(hub)
    mod = load_recipe("imagenet")
    m = mod.ModelConfig(name="resnet18", pretrained=True)
    same = mod.build_model(m, (3, 32, 32), 1000).state_dict()
    assert all(torch.equal(same[k], v) for k, v in saved.items())
    torch.manual_seed(0)
    three = mod.build_model(m, (3, 32, 32), 3).state_dict()
    assert all(torch.equal(three[k], v) for k, v in saved.items() if not k.startswith("fc."))
    assert three["fc.weight"].shape == (3, 512)
    torch.manual_seed(0)  # the same fresh head as a model built without pretrained weights
    fresh = mod.build_model(mod.ModelConfig(name="resnet18"), (3, 32, 32), 3).state_dict()
    assert torch.equal(three["fc.weight"], fresh["fc.weight"])
    out = capsys.readouterr().out
    assert "model.pretrained: loaded 122 of 122 tensors from ResNet18_Weights.IMAGENET1K_V1" in out
    assert "re-initialised (shape differs; this run's fresh init is kept): fc.weight [1000, 512] -> [3, 512], " \
           "fc.bias [1000] -> [3]" in out


def test_missing_weights_file_names_the_file_and_the_directory(tmp_path):
    home = tmp_path / "torch"
    p = run_recipe("imagenet", f"data.root={tmp_path / 'tree'}", f"out_dir={tmp_path / 'run'}", "model.pretrained=true",
                   env={"TORCH_HOME": str(home)}, check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert (f"model.pretrained=true needs torchvision's ResNet18_Weights.IMAGENET1K_V1 weights: put the file "
            f"resnet18-f37072fd.pth in {home}/hub/checkpoints/") in p.stderr
    assert "model.pretrained_download=true" in p.stderr and not (home / "hub" / "checkpoints").exists()
