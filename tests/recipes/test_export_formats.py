"""--export --to model.pt2 / model.onnx: checked against eager before success, the sidecar JSON, loading.

The default run: an ONNX export of mnist_mlp trained on real Fashion-MNIST, loaded the way docs/usage.md does, with only onnxruntime, numpy and the sidecar (the snippet run as
written), giving eager PyTorch's classes on real test images; a program that differs from eager (a model that draws noise in
its forward: the exported program draws its own) refused with nothing written; ONNX without its
packages. The DDP run's exports to both formats are in test_after_training.py, ZeRO and FSDP checkpoints
in tests/launch/test_engines.py (ZeRO-2; ZeRO-3 in test_export_deepspeed.py) and tests/dist/test_fsdp.py, the cGAN in tests/gan. Under
`-m heavy`: every recipe's debug run to both formats.
"""
import ast
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from common.config import UserError
from common.data.datasets import read_idx
from common.lifecycle import deploy_formats, deployed
from common.lifecycle.export import load_model
from support.images import FASHION
from support.inprocess import run_inprocess
from support.runs import ROOT, load_recipe



def onnx_snippets() -> dict[str, str]:
    """{page: its python block that loads model.onnx in onnxruntime with numpy alone}: docs/usage.md's (runs as
    written; the README's JPEG-to-class block is run by test_readme_after_training.py)."""
    found = {}
    for page in ("docs/usage.md",):
        blocks = re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), re.S)
        found.update({page: b for b in blocks if "import onnxruntime" in b})
    return found


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not (FASHION / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist")
    out = tmp_path_factory.mktemp("fashion") / "run"
    run_inprocess("mnist_mlp", f"out_dir={out}", "data.name=fashion_mnist", f"data.root={FASHION}", "train.max_steps=8")
    return out


def test_the_docs_show_an_onnx_snippet():
    assert "docs/usage.md" in onnx_snippets()


@pytest.mark.parametrize("page", sorted(onnx_snippets()))
def test_onnx_in_onnxruntime_as_the_docs_show_gives_eager_classes(page, fashion, tmp_path, monkeypatch, capsys):
    proc = run_inprocess("mnist_mlp", "--export", str(fashion), "--to", str(tmp_path / "model.onnx"), config=None)
    assert "checked model.onnx against eager PyTorch on the first eval batch (32 rows) and at batch 1" in proc.stdout
    pixels = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")[-64:, None]  # real uint8 images [64, 1, 28, 28]
    np.save(tmp_path / "images.npy", pixels)
    monkeypatch.chdir(tmp_path)
    exec(compile(onnx_snippets()[page], page, "exec"), {})  # as written, in the folder holding the files it names
    names = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    run_inprocess("mnist_mlp", "--export", str(fashion), "--to", str(tmp_path / "w.pt"), config=None)
    model, info = load_model(tmp_path / "w.pt", load_recipe("mnist_mlp").task)
    with torch.no_grad():
        eager = model(info.preprocess(torch.tensor(pixels))).argmax(1)
    assert names == [info.classes[i] for i in eager] and len(set(names)) > 1
    assert info.classes[0] == "T-shirt/top"


class Noisy(nn.Module):
    """A model whose output depends on noise drawn in forward: eager and the exported program draw their own."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) + torch.randn(x.shape[0], 3)


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_a_program_that_differs_from_eager_is_exit_2_and_not_written(suffix, tmp_path):
    task = SimpleNamespace(build_models=lambda cfg, loaders: {"net": Noisy()}, exported="net", inputs=None)
    loaders = SimpleNamespace(eval=[(torch.randn(8, 4), torch.zeros(8))])
    path = tmp_path / f"model{suffix}"
    with pytest.raises(UserError, match=r"the exported program's output differs from eager PyTorch's by .* \(tolerance "
                                        r".*\) on the first eval batch; nothing was written"):
        deploy_formats.export_program(task, None, loaders, Noisy().state_dict(), path, {}, print)
    assert list(tmp_path.iterdir()) == []  # neither the program, nor its sidecar, nor a temporary file


def test_onnx_without_its_packages_says_which_requirements_file(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # what `import onnxscript` does where it is not installed
    proc = run_inprocess("mnist_mlp", "--export", str(tmp_path), "--to", str(tmp_path / "m.onnx"), config=None,
                         check=False)
    assert proc.returncode == 2 and "pip install -r requirements-onnx.txt" in proc.stderr
    assert "onnxscript is not installed" in proc.stderr and "Traceback" not in proc.stderr
    assert (ROOT / "requirements-onnx.txt").is_file() and "requirements-onnx.txt" in (ROOT / ".ci" / "run").read_text()


def test_deployed_load_names_a_damaged_file_or_a_missing_sidecar(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"not a model")
    (tmp_path / "m.onnx.json").write_text("{}")
    with pytest.raises(UserError, match=r"the export's metadata .*m.onnx.json is incomplete: the file has no 'recipe'"):
        deployed.load(tmp_path / "m.onnx")
    with pytest.raises(UserError, match=r"the exported program .*m.onnx cannot be read"):
        deployed.program(tmp_path / "m.onnx")
    with pytest.raises(UserError, match=r"the export's metadata .*m.pt2.json cannot be read \(no such file\)"):
        deployed.read_sidecar(tmp_path / "m.pt2")


RECIPES = ["mnist_mlp", "mnist_cnn", "lenet_cifar", "resnet_cifar", "senet_cifar", "vgg_cifar", "imagenet",
           "imagenet-vit", "gan_mnist", "cgan_mnist", "dcgan", "pix2pix"]
GANS = {"gan_mnist", "cgan_mnist", "dcgan", "pix2pix"}
INPUTS = {"gan_mnist": ["z"], "dcgan": ["z"], "cgan_mnist": ["z", "labels"]}  # the others: ["images"]


@pytest.mark.heavy
@pytest.mark.parametrize("case", RECIPES)
def test_every_recipe_exports_to_both_formats(case, tmp_path):
    recipe, _, timm = case.partition("-")
    extra = ["eval.classifier=none"] if recipe in GANS else []
    if recipe == "imagenet":  # its generated tree made in a folder of the test's, read in this process
        extra += [f"data.root={tmp_path / 'tree'}", "data.workers=0"]
    if timm:
        extra.append("model.name=timm:vit_tiny_patch16_224")
    out = tmp_path / "run"
    run_inprocess(recipe, f"out_dir={out}", *extra)
    for suffix in ("pt2", "onnx"):
        to = tmp_path / f"model.{suffix}"
        proc = run_inprocess(recipe, "--export", str(out), "--to", str(to), *extra, config=None)
        assert f"checked model.{suffix} against eager PyTorch" in proc.stdout
        forward, meta = deployed.load(to)
        assert meta["recipe"] == recipe and meta["model"] == ("G" if recipe in GANS else "net")
        assert meta["check"]["max_abs_diff"] <= meta["check"]["tolerance"]
        assert [i["name"] for i in meta["inputs"]] == INPUTS.get(recipe, ["images"])
        args = [torch.zeros(3, *i["shape"][1:], dtype=getattr(torch, i["dtype"])) for i in meta["inputs"]]
        assert forward(*args).shape[0] == 3  # a batch size neither the export nor the check used
