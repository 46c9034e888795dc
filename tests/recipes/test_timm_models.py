"""imagenet.py model.name=timm:<name>: real timm models trained on a generated tree (in this process and on
2 processes under engine=fsdp), their pretrained weights from a Hugging Face hub cache laid out as
huggingface_hub writes it (generated here: never downloaded), and the errors for a wrong name or a missing file."""
import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from common.config import UserError
from support.images import image_tree
from support.inprocess import run_inprocess
from support.outputs import final_weights, metrics
from support.runs import load_recipe, run_recipe

SMALL = ("data.name=imagefolder", "data.workers=0", "train.max_steps=2", "train.log_every_steps=1")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    rng = np.random.default_rng(0)
    return image_tree(tmp_path_factory.mktemp("timm_tree"), {"train": 16, "val": 6},
                      lambda split, i: rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), classes=3)


def test_vit_with_drop_path_recomputed_in_backward_changes_no_number(tree, tmp_path):
    """Stochastic depth draws a mask per sample in each block; activation checkpointing replays the RNG, so the
    recomputed forward drops the same paths and the weights are bitwise those of a run that keeps activations."""
    args = (f"data.root={tree}", *SMALL, "model.name=timm:vit_tiny_patch16_224", "model.drop_path=0.5")
    run_inprocess("imagenet", *args, f"out_dir={tmp_path / 'plain'}")
    ac = run_inprocess("imagenet", *args, f"out_dir={tmp_path / 'ac'}", "train.activation_checkpointing=true")
    assert "activation checkpointing: 12 blocks of VisionTransformer" in ac.stdout
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "ac")
    assert a["pos_embed"].shape == (1, 5, 192)  # built for 32 px images: 2 x 2 patches and the class token
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    no_drop = run_inprocess("imagenet", *args, "model.drop_path=0", f"out_dir={tmp_path / 'no_drop'}")
    assert no_drop.returncode == 0 and not torch.equal(final_weights(tmp_path / "no_drop")["head.weight"], a["head.weight"])


def test_a_vit_trained_at_one_crop_is_evaluated_at_another(tree, tmp_path):
    """FixRes with a model timm fixes to one input size: built for the training crop, it evaluates at
    data.val_crop (timm resamples its position embeddings) instead of failing at the first evaluation."""
    run_inprocess("imagenet", f"data.root={tree}", *SMALL, "model.name=timm:vit_tiny_patch16_224", "data.train_crop=32",
                  "data.val_resize=56", "data.val_crop=48", f"out_dir={tmp_path / 'run'}")
    assert final_weights(tmp_path / "run")["pos_embed"].shape == (1, 5, 192)  # 2 x 2 patches of the 32 px crop
    assert [m["step"] for m in metrics(tmp_path / "run") if m["split"] == "val"] == [2]


@pytest.mark.parametrize("name, blocks", [pytest.param("vit_tiny_patch16_224", 12, marks=pytest.mark.heavy),
                                          ("convnext_atto", 16)])
def test_fsdp_on_two_processes_shards_each_block(tree, tmp_path, name, blocks):
    out = tmp_path / "run"
    p = run_recipe("imagenet", f"data.root={tree}", f"out_dir={out}", *SMALL, f"model.name=timm:{name}",
                   "engine=fsdp", "optim.name=lamb", "optim.weight_decay=0.05", nproc=2)
    assert f"FSDP2 fully_shard over 2 rank(s), {blocks} blocks + root" in p.stdout
    train = [m for m in metrics(out) if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2] and all(np.isfinite(m["loss"]) for m in train)
    assert [m for m in metrics(out) if m["split"] == "val"]


def test_an_unknown_name_is_exit_2_naming_close_matches(tree, tmp_path):
    p = run_inprocess("imagenet", f"data.root={tree}", *SMALL, "model.name=timm:convnext_ato",
                      f"out_dir={tmp_path / 'run'}", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "model.name=timm:convnext_ato: timm has no model 'convnext_ato'; close matches: convnext_atto" in p.stderr
    mod = load_recipe("imagenet")
    with pytest.raises(UserError, match=r"timm:resnet18.bogus: timm has no weights tagged 'bogus' for resnet18; its "
                                        r"tags: a1_in1k, .*tv_in1k"):
        mod.build_model(mod.ModelConfig(name="timm:resnet18.bogus"), (3, 32, 32), 3)


def test_drop_path_is_refused_for_a_model_without_stochastic_depth():
    mod = load_recipe("imagenet")
    with pytest.raises(UserError, match=r"model.drop_path=0.1 is read by timm models only; set it to 0 for resnet18"):
        mod.build_model(mod.ModelConfig(name="resnet18", drop_path=0.1), (3, 32, 32), 3)
    with pytest.raises(UserError, match=r"timm's vgg11 has no stochastic depth; set model.drop_path=0"):
        mod.build_model(mod.ModelConfig(name="timm:vgg11", drop_path=0.1), (3, 32, 32), 3)


# ----------------------------------------------------------------------------- pretrained weights

@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache (HF_HUB_CACHE) and torch hub (TORCH_HOME) for this test."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "hf"


def cache_weights(hub, repo: str, sd: dict) -> str:
    """sd as huggingface_hub caches a download of repo's model.safetensors: the file in snapshots/<commit>/,
    and refs/main naming that commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return str(path)


def test_pretrained_weights_are_read_from_the_hub_cache(hub, capsys):
    torch.manual_seed(7)
    saved = timm.create_model("resnet18").state_dict()
    cache_weights(hub, "timm/resnet18.a1_in1k", saved)
    mod = load_recipe("imagenet")
    m = mod.ModelConfig(name="timm:resnet18", pretrained=True)
    same = mod.build_model(m, (3, 32, 32), 1000).state_dict()
    assert same.keys() == saved.keys() and all(torch.equal(same[k], v) for k, v in saved.items())
    torch.manual_seed(0)
    three = mod.build_model(m, (3, 32, 32), 3).state_dict()
    assert all(torch.equal(three[k], v) for k, v in saved.items() if not k.startswith("fc."))
    torch.manual_seed(0)  # the head is the fresh one a model built without pretrained weights has
    fresh = mod.build_model(mod.ModelConfig(name="timm:resnet18"), (3, 32, 32), 3).state_dict()
    assert three["fc.weight"].shape == (3, 512) and torch.equal(three["fc.weight"], fresh["fc.weight"])
    out = capsys.readouterr().out
    assert "model.pretrained: loaded timm's timm/resnet18.a1_in1k weights\n" in out
    assert "its classifier (fc) keeps this run's fresh init: 3 classes, not 1000" in out


def test_a_missing_weights_file_names_the_file_and_the_directory(hub, tree, tmp_path):
    p = run_inprocess("imagenet", f"data.root={tree}", *SMALL, "model.name=timm:resnet18", "model.pretrained=true",
                      f"out_dir={tmp_path / 'run'}", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert ("model.pretrained=true needs timm's resnet18 weights: put model.safetensors of the Hugging Face repo "
            f"timm/resnet18.a1_in1k, in {hub}/models--timm--resnet18.a1_in1k/snapshots/<revision>/") in p.stderr
    assert "model.pretrained_download=true" in p.stderr and not hub.exists()


def test_the_hub_cache_is_where_huggingface_hub_puts_it(monkeypatch, tmp_path):
    import huggingface_hub
    from common.models.timm_models import hub_cache
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    if hub_cache() != __import__("pathlib").Path(huggingface_hub.constants.HF_HUB_CACHE):
        pytest.skip("this process's huggingface_hub was imported under another HF_* environment")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache() == tmp_path / "cache"


@pytest.mark.heavy
@pytest.mark.parametrize("optim", ["lars", "lamb"])
def test_fsdp_layerwise_optimizers_equal_ddp(tree, tmp_path, optim):
    """LARS's and LAMB's trust ratios take the norm of each whole parameter: under FSDP, of a sharded
    DTensor, reduced across ranks. Per-shard norms would differ at the second step by far more than the
    1e-4 relative the summation order allows (the shards' sums of squares added in another order)."""
    curves = {}
    for engine in ("ddp", "fsdp"):
        out = tmp_path / engine
        run_recipe("imagenet", f"data.root={tree}", f"out_dir={out}", *SMALL, "train.max_steps=4",
                   "model.name=timm:vit_tiny_patch16_224", f"engine={engine}", f"optim.name={optim}",
                   "optim.weight_decay=0.05", "optim.lr=0.5", nproc=2)
        curves[engine] = {m["step"]: m["loss"] for m in metrics(out) if m["split"] == "train"}
    ref = curves["ddp"]
    assert sorted(ref) == [1, 2, 3, 4] and len(set(ref.values())) == 4
    assert max(abs(curves["fsdp"][s] - ref[s]) / ref[s] for s in ref) <= 1e-4, curves


def test_resnet_with_lamb_resumes_bitwise(tree, tmp_path):
    """timm's LAMB keeps its step count in the param groups: a resume restores it (this run's hyperparameters
    replace only the config's keys), so 2 + 2 steps through a checkpoint are bitwise 4 straight steps
    (a constant LR: the first run's schedule is not cut short by its shorter length)."""
    args = (f"data.root={tree}", *SMALL, "model.name=timm:resnet18", "optim.name=lamb", "optim.lr=0.01",
            "optim.schedule=constant", "train.ckpt_every_steps=2")
    run_inprocess("imagenet", *args, "train.max_steps=4", f"out_dir={tmp_path / 'straight'}")
    run_inprocess("imagenet", *args, f"out_dir={tmp_path / 'resumed'}")
    again = run_inprocess("imagenet", *args, "train.max_steps=4", f"out_dir={tmp_path / 'resumed'}")
    assert "resumed from" in again.stdout
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_a_failed_download_is_one_error_naming_the_repo(hub, monkeypatch):
    """huggingface_hub in offline mode (HF_HUB_OFFLINE=1, read by the library at import: set on it here) refuses
    the download as an unreachable hub would: one UserError naming the repository and where to put the file."""
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    mod = load_recipe("imagenet")
    m = mod.ModelConfig(name="timm:resnet18", pretrained=True, pretrained_download=True)
    with pytest.raises(UserError, match=rf"model.pretrained_download: downloading timm/resnet18.a1_in1k from the Hugging "
                                        rf"Face hub failed \(\w+: .*\); fetch it on a connected machine into {hub}$"):
        mod.build_model(m, (3, 32, 32), 3)
    assert not any(hub.rglob("*.safetensors"))
