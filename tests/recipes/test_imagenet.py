"""imagenet.py on an ImageFolder tree of real Fashion-MNIST images."""

import pytest
import torch

from common.formats.export import read_export
from support.inprocess import run_inprocess
from support.runs import recipe_command, run_ranks, run_recipe
from support.outputs import metrics, resume_dir_from
from support.images import fashion_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return fashion_tree(tmp_path_factory.mktemp("imagefolder"), train=8, val=3)


# Both heavy: 1 process is the fresh-clone test, 2 processes tests/recipes/test_shards_training.py's folder run.
@pytest.mark.parametrize("nproc", [pytest.param(1, marks=pytest.mark.heavy), pytest.param(2, marks=pytest.mark.heavy)])
def test_trains_and_evaluates_every_val_image(tree, tmp_path, nproc):
    out = tmp_path / "run"
    run_recipe("imagenet", f"data.root={tree}", f"out_dir={out}", nproc=nproc)
    val = [m for m in metrics(out) if m["split"] == "val"]
    # 9 val images over nproc ranks: the recipe checks the reduced count equals len(val set).
    assert val and 0 <= val[-1]["acc1"] <= 100
    train = [m for m in metrics(out) if m["split"] == "train"]
    assert train[-1]["step"] == 4 and all(m["samples_per_s"] > 0 for m in train)


def test_unreadable_image_is_named(tree, tmp_path):
    import shutil
    broken = tmp_path / "tree"
    shutil.copytree(tree, broken)
    bad = next((broken / "train" / "trouser").iterdir())
    bad.write_bytes(b"not an image at all")
    p = run_recipe("imagenet", f"data.root={broken}", f"out_dir={tmp_path / 'run'}", "data.workers=0", check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "cannot read image" in p.stderr and f"trouser/{bad.name}" in p.stderr and "delete or replace" in p.stderr


def test_missing_tree_says_what_layout_is_expected(tmp_path):
    p = run_recipe("imagenet", "data.name=imagefolder", f"data.root={tmp_path}", f"out_dir={tmp_path / 'run'}", check=False)
    assert p.returncode == 2 and "must hold train/ and val/" in p.stderr


def test_debug_config_runs_from_a_fresh_clone_on_a_generated_tree(tmp_path):
    """imagenet_debug.yaml says data.name=synthetic: the tree is made in data.root on first use."""
    root = tmp_path / "tree"
    run_inprocess("imagenet", f"data.root={root}", f"out_dir={tmp_path / 'run'}")
    made = sorted(p.relative_to(root).parts[:2] for p in root.rglob("*.jpg"))
    assert {m[0] for m in made} == {"train", "val"} and {m[1] for m in made} == {"class_0", "class_1", "class_2"}
    assert [m["split"] for m in metrics(tmp_path / "run")].count("val") >= 1


def test_a_link_loop_stops_every_rank_naming_the_link(tree, tmp_path):
    """Rank 0 lists the tree: its error reaches the other rank, which would otherwise wait for the listing."""
    import shutil
    looped = shutil.copytree(tree, tmp_path / "tree")
    (looped / "train" / "tshirt" / "up").symlink_to("..")
    cmd, env = recipe_command("imagenet", f"data.root={looped}", f"out_dir={tmp_path / 'run'}", nproc=2)
    codes, p = run_ranks(cmd, env, timeout=300)  # each rank's own exit code
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all("symbolic link" in e and "train/tshirt/up" in e for e in errors), p.stderr[-3000:]
    assert codes == [2, 2], (codes, p.stderr[-3000:])


def test_resume_mid_epoch_with_ta_wide_erasing_and_mixing_is_bitwise_identical(tmp_path):
    """The generated tree (48 training JPEGs, batch 8: 6 steps an epoch): 8 steps in one go == 3 steps, a resume
    from that mid-epoch checkpoint, 5 more across the epoch's end; every augmentation is drawn per sample
    from the sampler's seeds and each step's MixUp/CutMix from its own, so the resumed run sees the very
    same tensors."""
    from support.outputs import final_weights
    args = [f"data.root={tmp_path / 'tree'}", "data.workers=0", "data.auto_augment=ta_wide", "data.random_erase=0.5",
            "data.mixup_alpha=0.2", "data.cutmix_alpha=1.0",
            "data.train_crop=32", "data.val_resize=40", "data.val_crop=36", "data.interpolation=bicubic",
            "train.max_steps=8", "train.ckpt_every_steps=3", "ckpt.keep_last=10"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_inprocess("imagenet", f"out_dir={full}", *args)
    resume_dir_from(full, 3, resumed)
    again = run_inprocess("imagenet", f"out_dir={resumed}", *args)
    assert "step 3, epoch 0, batch 3" in again.stdout
    a, b = final_weights(full), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The exported model says how an image becomes its input: the eval resize, crop and interpolation.
    run_inprocess("imagenet", "--export", str(full), "--to", str(tmp_path / "m.safetensors"), config=None)
    spec = read_export(tmp_path / "m.safetensors")[1]["input"]
    assert (spec["shape"], spec["resize"], spec["center_crop"], spec["interpolation"]) == ([3, 32, 32], 40, 36, "bicubic")
    # Its Preprocess is that eval transform, torchvision's preset, bit for bit, on any image size (a 41x46 JPEG
    # for this 32x32 model included); --predict on the val tree gives --evaluate's accuracy.
    from PIL import Image
    from torchvision.transforms import v2
    from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from common.lifecycle.preprocess import Preprocess
    Image.fromarray(torch.randint(0, 256, (46, 41, 3), dtype=torch.uint8).numpy()).save(tmp_path / "odd.jpg")
    files = [*sorted((tmp_path / "tree" / "val").rglob("*.jpg")), tmp_path / "odd.jpg"]
    preset = v2.Compose([v2.Resize(40, interpolation=v2.InterpolationMode.BICUBIC, antialias=True), v2.CenterCrop(36),
                         v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    x = Preprocess.from_file(tmp_path / "m.safetensors")(files)
    assert x.shape == (len(files), 3, 36, 36) and torch.equal(x, torch.stack([preset(Image.open(f).convert("RGB")) for f in files]))
    ev = run_inprocess("imagenet", "--evaluate", str(full), config=None).result
    run_inprocess("imagenet", "--predict", str(tmp_path / "m.safetensors"), "--input", str(tmp_path / "tree" / "val"),
                  "--to", str(tmp_path / "p.csv"), "--top-k", "1", config=None)
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert len(rows) == len(files) - 1
    assert 100.0 * sum(r.split(",")[0].split("/")[-2] == r.split(",")[1] for r in rows) / len(rows) == ev["acc1"]
    # --evaluate on a machine without CUDA: data.decode=gpu is refused before any file is read, naming the fix.
    p = run_inprocess("imagenet", "--evaluate", str(full), "data.decode=gpu", config=None, check=False)
    assert p.returncode == 2 and "data.decode=gpu decodes JPEGs with nvJPEG on a CUDA GPU" in p.stderr, p.stderr


def test_bad_crops_and_policies_are_exit_2_naming_the_fix(tmp_path):
    common = [f"data.root={tmp_path / 'tree'}", f"out_dir={tmp_path / 'run'}", "data.workers=0"]
    p = run_inprocess("imagenet", *common, "data.auto_augment=typo", check=False)
    assert p.returncode == 2 and "data.auto_augment" in p.stderr
    assert all(c in p.stderr for c in ("none", "autoaugment", "randaugment", "ta_wide", "augmix")), p.stderr
    p = run_inprocess("imagenet", *common, "data.val_resize=40", "data.val_crop=48", check=False)
    assert p.returncode == 2 and "data.val_resize=40 is smaller than data.val_crop=48" in p.stderr, p.stderr
    p = run_inprocess("imagenet", *common, "data.auto_augment=augmix", "data.interpolation=bicubic", check=False)
    assert p.returncode == 2 and "set data.interpolation=bilinear" in p.stderr, p.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
