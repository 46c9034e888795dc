"""GAN recipes as real processes: debug configs under python and torchrun (gloo, 2 ranks), exact resume.

The judge classifier behind val/fd is trained by our own mnist_cnn recipe (conftest.judge_dir).
"""
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from common.config import flatten
from common.lifecycle import deployed
from support.runs import ROOT, assert_finished, recipe_command, run_recipe
from support.images import image_tree
from support.inprocess import run_inprocess
from support.outputs import final_weights, last_checkpoint_step, metrics

RECIPES = ["gan_mnist", "cgan_mnist", "dcgan", "pix2pix"]
GRID = {"gan_mnist": "fixed_noise", "cgan_mnist": "class_rows", "dcgan": "fixed_noise", "pix2pix": "input_output_target"}
VAL_KEYS = {"gan_mnist": {"fd"}, "cgan_mnist": {"fd", "label_acc", "real_label_acc"}, "dcgan": {"fd"},
            "pix2pix": {"fd", "l1", "psnr"}}
DRIVER = ROOT / "tests" / "support" / "rank_check.py"


def load_checkpoint(out: Path) -> dict:
    from common.formats.checkpoint import load_file
    return load_file(out / "checkpoints" / f"step_{last_checkpoint_step(out):08d}")


def smooth(size: tuple[int, int], pairs: bool = False):
    """Pixels for image_tree: smooth random images (pairs: side-by-side A|B with A = edges(B))."""
    from common.data.gan_data import edges
    g, (w, h) = torch.Generator().manual_seed(0), size

    def pixels(split, i):
        coarse = torch.rand(3, 4, 4, generator=g)
        img = (torch.nn.functional.interpolate(coarse[None], size=(h, w), mode="bilinear")[0] * 255).to(torch.uint8)
        if pairs:
            img = torch.cat([edges(img[None])[0], img], dim=2)
        return img.permute(1, 2, 0)
    return pixels


@pytest.mark.parametrize("recipe", RECIPES)
def test_debug_config_trains_under_python(recipe, judge_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_inprocess(recipe, f"out_dir={out}", f"eval.classifier={judge_dir}")
    rows = metrics(out)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert train and len(val) == 2, rows
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if isinstance(v, float)), rows
    # 16 steps against a G that barely moved: D must be learning to tell real from fake.
    assert train[-1]["loss_d"] < train[0]["loss_d"], [r["loss_d"] for r in train]
    assert VAL_KEYS[recipe] <= set(val[-1]), val[-1]
    assert val[-1]["fd"] > 0
    if recipe == "cgan_mnist":  # the judge must recognise real images, or label_acc means nothing
        assert val[-1]["real_label_acc"] > 90, val[-1]
        # G(z, labels) as ONNX, checked in onnxruntime on the eval batch's labels; the labels steer it.
        run_inprocess(recipe, "--export", str(out), "--to", str(tmp_path / "g.onnx"), config=None)
        forward, meta = deployed.load(tmp_path / "g.onnx")
        assert [(i["name"], i["dtype"]) for i in meta["inputs"]] == [("z", "float32"), ("labels", "int64")]
        z = torch.rand(2, meta["config"]["model"]["z_dim"]).repeat(2, 1)
        images = forward(z, torch.tensor([0, 1, 2, 3]))
        assert images.shape == (4, 1, 28, 28) and not torch.equal(images[:2], images[2:])
    if recipe == "pix2pix":
        assert 0 < val[-1]["l1"] < 1 and val[-1]["psnr"] > 0
        assert train[-1]["l1"] < train[0]["l1"], [r["l1"] for r in train]
    # A grid per evaluation, as PNG and in TensorBoard.
    pngs = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert pngs == [f"{GRID[recipe]}_{r['step']:08d}.png" for r in val], pngs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "tb" / "val")).Reload()  # the grids come with the evaluation
    assert f"samples/{GRID[recipe]}" in events.Tags()["images"]
    # Both optimizers' learning rates, by name: in every train row, on the console and in TensorBoard.
    assert all({"lr/G", "lr/D"} <= set(r) and "lr" not in r for r in train), train[-1]
    console = [line for line in proc.stdout.splitlines() if line.startswith("[train] step ")]
    assert len(console) == len(train) and all(" lr/G " in line and " lr/D " in line for line in console), console
    scalars = EventAccumulator(str(out / "tb" / "train")).Reload()
    for key in ("lr/G", "lr/D"):
        assert [(e.step, e.value) for e in scalars.Scalars(key)] == [(r["step"], pytest.approx(r[key])) for r in train]
    # The checkpoint holds both nets, both optimizers, the scaler (and the EMA where configured).
    ckpt = load_checkpoint(out)
    assert set(ckpt["models"]) == set(ckpt["optims"]) == {"G", "D"}
    assert all(ckpt["optims"][k]["state"] for k in ("G", "D")), "optimizers never stepped"
    assert "scaler" in ckpt["engine"] and ckpt["ema"].keys() == ({"G"} if recipe == "dcgan" else set())


def run_ranks(recipe: str, out: Path, *overrides: str) -> list[dict]:
    """The recipe under torchrun (2 ranks, gloo) through rank_check.py; every rank's state digests."""
    cmd, env = recipe_command(recipe, f"out_dir={out}", *overrides, nproc=2)
    cmd.insert(cmd.index(str(ROOT / "recipes" / f"{recipe}.py")), str(DRIVER))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert_finished(proc, out)
    return [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("recipe", [r if r == "pix2pix" else pytest.param(r, marks=pytest.mark.heavy)
                                    for r in RECIPES])  # gan_mnist: test_two_ranks_train_like_one_process_with_the_global_batch
def test_ddp_ranks_end_identical(recipe, judge_dir, tmp_path):
    out, extra = tmp_path / "run", []
    if recipe == "pix2pix":  # AB folders from disk, decoded by a spawned worker per rank
        image_tree(tmp_path / "ab", {"train": 48, "val": 10}, smooth((32, 32), pairs=True))
        extra = ["data.name=folder", f"data.root={tmp_path / 'ab'}", "data.workers=1", "data.augment=true"]
    ranks = run_ranks(recipe, out, f"eval.classifier={judge_dir}", "train.max_steps=8", *extra)
    before, after = ranks[0]["before"], ranks[0]["after"]
    assert any(k.startswith("models.G.") for k in after) and any(k.startswith("models.D.") for k in after)
    assert any(k.startswith("optims.D.") for k in after) and any(k.startswith("optims.G.") for k in after)
    changed = [k for k in before if k.startswith("models.") and before[k] != after[k]]
    assert any(".G." in k for k in changed) and any(".D." in k for k in changed), "training did not move both nets"
    differ = [k for k in after if after[k] != ranks[1]["after"].get(k)]
    assert not differ and after.keys() == ranks[1]["after"].keys(), f"ranks differ in {differ[:5]}"
    val = [r for r in metrics(out) if r["split"] == "val"]
    assert val and math.isfinite(val[-1]["fd"])


def test_two_ranks_train_like_one_process_with_the_global_batch(tmp_path):
    """Both optimizers, two nets: 2 ranks x 16 == 1 process x 32, up to float summation order.

    Holds because each rank takes its rows of the global batch's noise (gan.batch_noise) as the
    sampler gives it its rows of the data; dropout off (per-rank masks cannot match), SGD (Adam's
    first steps turn float-rounding differences of near-zero gradients into lr-sized ones).
    """
    common = ["model.d_input_dropout=0", "model.d_dropout=0", "optim.name=sgd", "optim.lr=0.05",
              "train.max_steps=8", "train.eval_every_steps=0"]
    run_inprocess("gan_mnist", f"out_dir={tmp_path / 'one'}", *common)
    run_recipe("gan_mnist", f"out_dir={tmp_path / 'two'}", *common, nproc=2)
    for net in ("G", "D"):
        one, two = final_weights(tmp_path / "one", net), final_weights(tmp_path / "two", net)
        assert one.keys() == two.keys()
        for k in one:
            torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{net}.{k}: {m}")


@pytest.mark.parametrize("recipe", ["dcgan", pytest.param("pix2pix", marks=pytest.mark.heavy)])
def test_resume_is_exact(recipe, judge_dir, tmp_path):
    """16 steps == 8 steps + resume + 8 steps, bitwise: both nets, both optimizers, EMA, scaler, RNG.

    dcgan: BatchNorm, a G EMA, noise from the RNG. pix2pix: dropout in G (RNG restore), AB pairs
    from disk through persistent worker processes, resumed mid-epoch (48 pairs, batch 16).
    """
    common = [f"eval.classifier={judge_dir}", "train.eval_every_steps=8", "train.ckpt_every_steps=8"]
    if recipe == "pix2pix":
        image_tree(tmp_path / "ab", {"train": 48, "val": 10}, smooth((32, 32), pairs=True))
        common += ["data.name=folder", f"data.root={tmp_path / 'ab'}", "data.workers=1", "data.augment=true"]
    run_inprocess(recipe, f"out_dir={tmp_path / 'full'}", *common, "train.max_steps=16")
    run_inprocess(recipe, f"out_dir={tmp_path / 'split'}", *common, "train.max_steps=8")
    proc = run_inprocess(recipe, f"out_dir={tmp_path / 'split'}", *common, "train.max_steps=16")
    assert "resumed from" in proc.stdout and "step 8" in proc.stdout, proc.stdout[-2000:]
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 16
    for kind in ("models", "optims", "ema", "engine"):
        flat_a, flat_b = flatten(a[kind]), flatten(b[kind])
        assert flat_a.keys() == flat_b.keys(), kind
        for k in flat_a:
            if torch.is_tensor(flat_a[k]):
                assert torch.equal(flat_a[k], flat_b[k]), f"{kind}.{k} differs after resume"
            else:
                assert flat_a[k] == flat_b[k], f"{kind}.{k}"
    val_a = [r for r in metrics(tmp_path / "full") if r["split"] == "val"]
    val_b = [r for r in metrics(tmp_path / "split") if r["split"] == "val"]
    assert [r["fd"] for r in val_a] == [r["fd"] for r in val_b]


@pytest.mark.parametrize("recipe,precision", [("gan_mnist", "fp16"), ("dcgan", "bf16")])
def test_mixed_precision(recipe, precision, tmp_path):
    """Both losses through autocast with BCE-with-logits; fp16 shares one GradScaler between G and D."""
    out = tmp_path / "run"
    run_inprocess(recipe, f"out_dir={out}", f"precision={precision}", "train.max_steps=8", "train.eval_every_steps=8")
    train = [r for r in metrics(out) if r["split"] == "train"]
    assert train and all(math.isfinite(r["loss_d"]) and math.isfinite(r["loss_g"]) for r in train)
    scaler = load_checkpoint(out)["engine"]["scaler"]
    if precision == "fp16":  # an enabled scaler records its scale; 8 finite steps keep it at the start value
        assert scaler["scale"] == 65536.0, scaler


def test_dcgan_on_an_image_folder(judge_dir, tmp_path):
    """data.name=folder: non-square RGB files, resized and center-cropped to 32 px, 3-channel DCGAN."""
    image_tree(tmp_path / "imgs", 40, smooth((40, 36)))
    out = tmp_path / "run"
    run_inprocess("dcgan", f"out_dir={out}", "data.name=folder", f"data.root={tmp_path / 'imgs'}",
               f"eval.classifier={judge_dir}", "train.max_steps=4", "train.eval_every_steps=4", "eval.samples=40")
    val = [r for r in metrics(out) if r["split"] == "val"]
    assert val and math.isfinite(val[-1]["fd"])
    assert load_checkpoint(out)["models"]["G"]["net.8.weight"].shape[1] == 3  # RGB output layer


def test_missing_judge_is_a_clear_error(tmp_path):
    proc = run_recipe("gan_mnist", f"out_dir={tmp_path / 'run'}", f"eval.classifier={tmp_path / 'nothing'}",
                      check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "python recipes/mnist_cnn.py out_dir=runs/fid_classifier" in proc.stderr
