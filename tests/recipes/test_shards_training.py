"""data.name=shards trains exactly as the folder it was packed from: the same seed and config end with bitwise
identical weights, for imagenet.py's streaming loader (1 and 2 processes) and an in-memory classifier, through
a resume in the middle of an epoch; --evaluate and --export read the shards too."""
import numpy as np
import pytest

from common.data.pack import pack
from common.formats.export import read_export
from support.images import image_tree
from support.inprocess import run_inprocess
from support.outputs import final_weights, metrics, resume_dir_from
from support.runs import run_recipe

# 24 training images, batch 8: 3 steps an epoch; step 4 is in the middle of the second
IMAGENET = ["data.image_size=32", "train.max_steps=5", "train.ckpt_every_steps=4", "ckpt.keep_last=10",
            "data.mixup_alpha=0.2", "data.random_erase=0.5", "train.eval_every_steps=5"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """A tree of JPEGs of assorted sizes, and its pack (several shards per split)."""
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)

    def pixels(split, i):
        h, w = rng.integers(30, 60, 2)
        return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    src = image_tree(d / "src", {"train": 24, "val": 6}, pixels, classes=3, ext="jpg")
    pack(src, d / "out", 16_000)
    return src, d / "out"


def same(a, b) -> bool:
    wa, wb = final_weights(a), final_weights(b)
    return wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)


def test_imagenet_from_shards_equals_the_folder_through_a_mid_epoch_resume(trees, tmp_path):
    src, out = trees
    folder, shards, resumed = tmp_path / "folder", tmp_path / "shards", tmp_path / "resumed"
    run_inprocess("imagenet", f"out_dir={folder}", "data.name=imagefolder", f"data.root={src}", "data.workers=0", *IMAGENET)
    run_inprocess("imagenet", f"out_dir={shards}", "data.name=shards", f"data.root={out}", "data.workers=0", *IMAGENET)
    assert same(folder, shards)
    resume_dir_from(shards, 4, resumed)
    again = run_inprocess("imagenet", f"out_dir={resumed}", "data.name=shards", f"data.root={out}", *IMAGENET)  # 1 worker
    assert "step 4, epoch 1, batch 1" in again.stdout and same(folder, resumed)
    assert [m for m in metrics(folder) if m["split"] == "val"][-1]["acc1"] == [
        m for m in metrics(resumed) if m["split"] == "val"][-1]["acc1"]


def _two_procs(trees, tmp_path, resume: bool):
    src, out = trees
    folder, shards, resumed = tmp_path / "folder", tmp_path / "shards", tmp_path / "resumed"
    run_recipe("imagenet", f"out_dir={folder}", "data.name=imagefolder", f"data.root={src}", "data.workers=0",
               *IMAGENET, nproc=2)
    run_recipe("imagenet", f"out_dir={shards}", "data.name=shards", f"data.root={out}", "data.workers=0", *IMAGENET,
               nproc=2)
    assert same(folder, shards)
    # What a 2-process imagenet run must do (tests/recipes/test_imagenet.py runs it on its own under heavy): all
    # its steps, and evaluation of every val image (the recipe checks the reduced count is the val set's).
    val, train = ([m for m in metrics(folder) if m["split"] == s] for s in ("val", "train"))
    assert val and 0 <= val[-1]["acc1"] <= 100 and train[-1]["step"] == 5 and all(m["samples_per_s"] > 0 for m in train)
    if resume:  # from the mid-epoch checkpoint, a worker per rank (the source is pickled into it)
        resume_dir_from(shards, 4, resumed)
        run_recipe("imagenet", f"out_dir={resumed}", "data.name=shards", f"data.root={out}", *IMAGENET, nproc=2)
        assert same(folder, resumed)


def test_imagenet_from_shards_equals_the_folder_on_two_processes(trees, tmp_path):
    _two_procs(trees, tmp_path, resume=False)


@pytest.mark.heavy
def test_imagenet_from_shards_on_two_processes_resumes_mid_epoch_as_the_folder_runs(trees, tmp_path):
    _two_procs(trees, tmp_path, resume=True)


def test_an_in_memory_classifier_from_shards_equals_the_folder_and_evaluates_and_exports_from_them(trees, tmp_path):
    src, out = trees
    args = ["data.folder_shape=[1,28,28]", "train.batch_size=8", "train.max_steps=5", "train.ckpt_every_steps=4",
            "ckpt.keep_last=10", "data.augment=true", "train.eval_every_steps=5"]
    folder, shards, resumed = tmp_path / "folder", tmp_path / "shards", tmp_path / "resumed"
    run_inprocess("mnist_cnn", f"out_dir={folder}", "data.name=folder", f"data.root={src}", *args)
    run_inprocess("mnist_cnn", f"out_dir={shards}", "data.name=shards", f"data.root={out}", *args)
    assert same(folder, shards)
    resume_dir_from(shards, 4, resumed)
    run_inprocess("mnist_cnn", f"out_dir={resumed}", "data.name=shards", f"data.root={out}", *args)
    assert same(folder, resumed)
    ev = run_inprocess("mnist_cnn", "--evaluate", str(shards), config=None)
    assert ev.result["acc1"] == [m for m in metrics(folder) if m["split"] == "val"][-1]["acc1"]
    run_inprocess("mnist_cnn", "--export", str(shards), "--to", str(tmp_path / "w.safetensors"), config=None)
    assert read_export(tmp_path / "w.safetensors")[1]["classes"] == ["c0", "c1", "c2"]
    rng = np.random.default_rng(1)
    other = image_tree(tmp_path / "other", {"train": 4, "val": 4}, lambda s, i: rng.integers(0, 255, (8, 8, 3), np.uint8),
                       classes=["c0", "c1", "c2", "c9"])
    pack(other, tmp_path / "other_pack", 10**6)
    p = run_inprocess("mnist_cnn", "--evaluate", str(shards), f"data.root={tmp_path / 'other_pack'}", config=None, check=False)
    assert p.returncode == 2 and "'c9' that the model does not know" in p.stderr and "train-000000.tar" in p.stderr
