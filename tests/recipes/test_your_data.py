"""Your data in any classifier: an ImageFolder tree for every classifier recipe, your own
Dataset through docs/data.md's recipe (run as written there), and top-5 accuracy."""
import re
import shutil

import pytest
import torch
import yaml

from common.data.datasets import synthetic_tree
from common.entry import run
from common.metrics.classify import evaluate_classifier
from support.inprocess import run_inprocess
from support.runs import ROOT, load_recipe
from support.outputs import final_weights, metrics, resume_dir_from

CLASSIFIERS = ["mnist_mlp", "resnet_cifar", *(pytest.param(r, marks=pytest.mark.heavy)  # the same path, other nets
                                              for r in ["mnist_cnn", "senet_cifar", "vgg_cifar", "lenet_cifar"])]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree") / "flowers"
    synthetic_tree(root, classes=3, train=16, val=4)  # real JPEGs of assorted sizes, RGB
    return root


@pytest.mark.parametrize("recipe", CLASSIFIERS)
def test_every_classifier_trains_on_an_image_folder(tmp_path, tree, recipe):
    out = tmp_path / "run"
    run_inprocess(recipe, f"out_dir={out}", "data.name=folder", f"data.root={tree}", "train.max_steps=4",
                  "train.batch_size=8", "train.eval_every_steps=4", "train.ckpt_every_steps=4", "train.log_every_steps=2")
    (val,) = [r for r in metrics(out) if r["split"] == "val"]
    assert val["step"] == 4 and 0 <= val["acc1"] <= 100 and "acc5" not in val  # 3 classes: top-5 is meaningless
    net = final_weights(out)
    first = next(v for k, v in net.items() if v.ndim >= 2)  # the first layer sees the recipe's channel count
    expect_c = 1 if recipe.startswith("mnist") else 3
    assert first.shape[1] == expect_c or first.shape[1] == expect_c * 28 * 28, first.shape


def test_a_folder_without_val_names_what_is_missing(tmp_path, tree, capsys):
    shutil.copytree(tree / "train", tmp_path / "t" / "train")
    with pytest.raises(SystemExit) as e:
        run(load_recipe("mnist_mlp").task, str(ROOT / "recipes" / "mnist_mlp.py"),
            ["device=cpu", f"out_dir={tmp_path / 'r'}", "data.name=folder", f"data.root={tmp_path / 't'}"])
    assert e.value.code == 2
    assert "has no val/ or test/; data.root must hold train/ and val/" in capsys.readouterr().err


def docs_recipe() -> str:
    text = (ROOT / "docs" / "data.md").read_text()
    return re.search(r"<!-- custom-dataset-recipe -->\n```python\n(.*?)```", text, re.S).group(1)


def test_the_documented_dataset_recipe_shards_and_resumes_bitwise(tmp_path):
    import subprocess
    from support.runs import assert_finished, recipe_command
    script = tmp_path / "my_data.py"  # saved outside the repo, as the docs allow
    recipe = docs_recipe()
    assert "dataset_data(make_dataset)" in recipe
    # One worker per loader (the recipe's default is 2): four spawned interpreters per run, not eight.
    script.write_text(recipe.replace("dataset_data(make_dataset)", "dataset_data(make_dataset, workers=1)"))

    def go(out, *extra):
        cmd, env = recipe_command("mnist_mlp", f"out_dir={out}", "train.batch_size=32", "train.log_every_steps=4",
                                  "train.eval_every_steps=16", "train.ckpt_every_steps=8", "optim.schedule=constant",
                                  "optim.lr=0.02", *extra, nproc=2, config=None)
        cmd = [str(script) if c == str(ROOT / "recipes" / "mnist_mlp.py") else c for c in cmd]
        assert_finished(subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path))
    go(tmp_path / "whole", "train.max_steps=16")
    go(resume_dir_from(tmp_path / "whole", 8, tmp_path / "split"), "train.max_steps=16")  # from its step-8 checkpoint
    whole, split = final_weights(tmp_path / "whole"), final_weights(tmp_path / "split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    (val,) = [r for r in metrics(tmp_path / "whole") if r["split"] == "val"]
    assert val["acc1"] > 70  # the two classes are separable; noise from the seeded transform included


class Fixed(torch.nn.Module):
    """The batch is the logits."""
    def forward(self, x):
        return x


class Rt:
    device = torch.device("cpu")

    @staticmethod
    def autocast():
        import contextlib
        return contextlib.nullcontext()

    @staticmethod
    def all_reduce_sum(t):
        return t


def test_top5_counts_a_sample_whose_label_is_among_the_five_highest_logits():
    y = torch.arange(20) % 10
    shift = torch.arange(20) // 2  # the label's rank: 0, 0, 1, 1, ..., 9, 9
    logits = torch.zeros(20, 10)
    for i in range(20):
        for rank in range(10):
            logits[i, (y[i] - shift[i] + rank) % 10] = 10.0 - rank
    loader = type("L", (), {"total": 20, "__iter__": lambda self: iter([(logits, y)])})()
    m = evaluate_classifier(Fixed(), Rt, loader)
    assert m["acc1"] == 10.0 and m["acc5"] == 50.0  # ranks 0 (2 of 20) and 0-4 (10 of 20)


@pytest.mark.parametrize("key", ["data.auto_augment=ta_wide", "data.random_erase=0.1"])
def test_a_policy_key_on_a_dataset_of_your_own_is_refused_not_ignored(key):
    """The built-in loaders apply data.auto_augment/random_erase to their uint8 images; a user Dataset's
    images come out of its own transforms, so the keys would do nothing there."""
    from common.config import ConfigError, apply
    from common.data.custom import dataset_data
    from common.tasks.classifier import ClassifierConfig

    class Two(torch.utils.data.Dataset):
        classes = ["a", "b"]
        def __len__(self):
            return 4
        def __getitem__(self, i):
            return torch.zeros(1, 4, 4), i % 2
    name, value = key.split("=")
    cfg = apply(ClassifierConfig(), {name: yaml.safe_load(value)}, "test")
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        dataset_data(lambda cfg, split: Two())(cfg, None)
