"""An image folder's class list through a run, on both loaders (mnist_mlp: the in-memory path of every
classifier with data.name=folder; imagenet: the streaming loader): train/ names the classes, the
checkpoint and the export keep the list, --evaluate on another tree labels it by name, and a class the
model does not know, or a resume on a train/ with other classes, is exit 2 naming it."""
import shutil

import pytest

from common.entry import run
from common.formats.export import read_export
from common.formats.checkpoint import load_file
from support.runs import ROOT, load_recipe
from support.outputs import last_checkpoint_step, metrics
from support.images import fashion_tree

CLASSES = ["pullover", "trouser", "tshirt"]
DATA = {"mnist_mlp": ["data.name=folder", "data.folder_shape=[1,28,28]"],
        "imagenet": ["data.name=imagefolder", "data.workers=0"]}


def go(recipe, *argv, debug=True):
    mod = load_recipe(recipe)
    config = ["--config", str(ROOT / "recipes" / "configs" / f"{recipe}_debug.yaml")] if debug else []
    return run(mod.task, mod.task.script, [*config, *argv, "device=cpu", "train.progress=false"])


def fails(capsys, recipe, *argv, debug=True) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        go(recipe, *argv, debug=debug)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return fashion_tree(tmp_path_factory.mktemp("fashion"), train=8, val=4)


def variant(full, where, remove=(), add=()):
    """A copy of the full tree without the `remove` class folders ("split/class") and with `add` ones
    (copies of its tshirt images)."""
    tree = shutil.copytree(full, where)
    for r in remove:
        shutil.rmtree(tree / r)
    for a in add:
        shutil.copytree(tree / a.split("/")[0] / "tshirt", tree / a)
    return tree


@pytest.fixture(scope="module", params=list(DATA))
def trained(request, full, tmp_path_factory):
    recipe = request.param
    out = tmp_path_factory.mktemp(recipe) / "run"
    go(recipe, f"out_dir={out}", f"data.root={full}", *DATA[recipe], "train.max_steps=4", "train.batch_size=8",
       "train.eval_every_steps=4", "train.ckpt_every_steps=4")
    return recipe, out


def test_the_checkpoint_and_the_export_keep_train_s_class_list(trained, tmp_path):
    recipe, out = trained
    assert load_file(out / "checkpoints" / f"step_{last_checkpoint_step(out):08d}")["classes"] == CLASSES
    go(recipe, "--export", str(out), "--to", str(tmp_path / "w.safetensors"), debug=False)
    _, meta = read_export(tmp_path / "w.safetensors")
    assert meta["classes"] == CLASSES and meta["num_classes"] == 3


def test_evaluate_labels_another_tree_by_the_trained_names(trained, full, tmp_path, capsys):
    """A tree without pullover (in train/ and val/) keeps trouser 1 and tshirt 2 and the 3-class head;
    one with a class the model does not know is exit 2 naming it."""
    recipe, out = trained
    lacking = variant(full, tmp_path / "lacking", remove=["train/pullover", "val/pullover"])
    capsys.readouterr()
    numbers = go(recipe, "--evaluate", str(out), f"data.root={lacking}", debug=False)
    assert 0 <= numbers["acc1"] <= 100
    assert "has no images of 1 of the 3 classes ('pullover')" in capsys.readouterr().out
    rows = metrics(out)
    assert rows[-1]["split"] == "eval"
    extra = variant(full, tmp_path / "extra", add=["val/sandal"])
    err = fails(capsys, recipe, "--evaluate", str(out), f"data.root={extra}", debug=False)
    assert "has class folder(s) 'sandal' that the model does not know" in err and "Traceback" not in err


def test_a_resume_on_a_train_tree_with_other_classes_is_refused(trained, full, tmp_path, capsys):
    recipe, trained_out = trained
    out = shutil.copytree(trained_out, tmp_path / "run")
    before = (out / "metrics.jsonl").read_bytes()
    lacking = variant(full, tmp_path / "lacking", remove=["train/pullover", "val/pullover"])
    err = fails(capsys, recipe, f"out_dir={out}", f"data.root={lacking}", *DATA[recipe], "train.max_steps=8",
                "train.batch_size=8")
    assert "train/ class folders: missing 'pullover'" in err and "cannot resume" in err
    assert (out / "metrics.jsonl").read_bytes() == before


def test_a_new_run_with_a_val_class_train_lacks_is_refused(full, tmp_path, capsys):
    tree = variant(full, tmp_path / "tree", remove=["train/pullover"])
    err = fails(capsys, "mnist_mlp", f"out_dir={tmp_path / 'run'}", f"data.root={tree}", *DATA["mnist_mlp"])
    assert "val has class folder(s) 'pullover' that the model does not know" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_another_tree_is_normalised_with_the_training_run_s_statistics(full, tmp_path):
    """The in-memory path measures mean/std on train/: read back on another tree, the checkpoint's figures
    are used (the export's input spec shows them), never that tree's."""
    out = tmp_path / "run"
    go("mnist_mlp", f"out_dir={out}", f"data.root={full}", *DATA["mnist_mlp"], "train.max_steps=2", "train.batch_size=8")
    other = variant(full, tmp_path / "other", remove=["train/pullover", "train/trouser"])
    specs = []
    for root, name in ((full, "a"), (other, "b")):
        go("mnist_mlp", "--export", str(out), "--to", str(tmp_path / f"{name}.safetensors"), f"data.root={root}",
           debug=False)
        specs.append(read_export(tmp_path / f"{name}.safetensors")[1]["input"])
    assert specs[0]["mean"] == specs[1]["mean"] and specs[0]["std"] == specs[1]["std"]
