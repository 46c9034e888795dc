"""Resume with changed settings: what may change takes effect and is logged; what a checkpoint
fixes stops the run before anything is written, every conflicting key named in one message."""
import typing
from pathlib import Path

import pytest
import torch

from common.cli import parse_cli
from common.config import schema
from common.entry import run
from common.formats.checkpoint import load_file
from common.fields import NOT_COMPARED, Fixed, roles
from support.inprocess import run_inprocess
from support.outputs import metrics
from support.runs import ROOT, load_recipe, run_recipe

DEBUG = lambda recipe: ["--config", str(ROOT / "recipes" / "configs" / f"{recipe}_debug.yaml"),  # noqa: E731
                        "device=cpu", "train.progress=false"]


def lr_by_step(out_dir: Path) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in metrics(out_dir) if r["split"] == "train"}


def test_changed_lr_schedule_length_and_optimizer_settings_take_effect(tmp_path):
    # Reference: 16 steps at lr 0.01 from the start. Resumed: 8 steps at 0.05, then lr 0.01 up to step 16.
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    run_inprocess("mnist_mlp", f"out_dir={ref}", "optim.lr=0.01", "optim.weight_decay=0.01", "optim.momentum=0.5")
    run_inprocess("mnist_mlp", f"out_dir={resumed}", "train.max_steps=8")
    out = run_inprocess("mnist_mlp", f"out_dir={resumed}", "train.max_steps=16", "optim.lr=0.01",
                        "optim.weight_decay=0.01", "optim.momentum=0.5").stdout
    assert ("changed since the checkpoint, in effect from now: train.max_steps 8 -> 16; optim.lr 0.05 -> 0.01; "
            "optim.momentum 0.9 -> 0.5; optim.weight_decay 0.0005 -> 0.01") in out, out
    # The cosine schedule is this run's (peak 0.01, 16 steps), at the checkpoint's step: the same LR at
    # every logged step after the resume as the run that had these settings from the start.
    after = {s: lr for s, lr in lr_by_step(resumed).items() if s > 8}
    assert after and after == {s: lr_by_step(ref)[s] for s in after}
    groups = load_file(resumed / "checkpoints" / "step_00000016")["optims"]["net"]["param_groups"]
    assert {(g["momentum"], g["weight_decay"]) for g in groups} == {(0.5, 0.01), (0.5, 0.0)}  # no decay on biases
    assert (resumed / "config.yaml").read_text() == (ref / "config.yaml").read_text().replace(str(ref), str(resumed))
    (history,) = (resumed / "config_history").iterdir()  # the config steps 1-8 were trained with
    assert history.name.endswith("-step_00000008.yaml") and "lr: 0.05" in history.read_text()


def test_precision_and_process_count_can_change_on_resume(tmp_path):
    run_inprocess("mnist_mlp", f"out_dir={tmp_path}", "train.max_steps=8")
    out = run_recipe("mnist_mlp", f"out_dir={tmp_path}", "precision=bf16", nproc=2).stdout
    assert "precision 'fp32' -> 'bf16'" in out and "; processes 1 -> 2" in out, out
    assert max(r["step"] for r in metrics(tmp_path)) == 16


def test_an_fp32_checkpoint_resumes_under_fp16(tmp_path):
    run_inprocess("mnist_mlp", f"out_dir={tmp_path}", "train.max_steps=8")
    out = run_inprocess("mnist_mlp", f"out_dir={tmp_path}", "precision=fp16").stdout  # a fresh loss scale
    assert "precision 'fp32' -> 'fp16'" in out and "finished: step 16 of 16" in out


def changed_value(recipe_cfg, key: str):
    """A valid value for `key` other than the one recipe_cfg has."""
    tp, _, _ = schema(type(recipe_cfg))[key]
    obj = recipe_cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    if typing.get_origin(tp) is typing.Literal:
        return next(v for v in typing.get_args(tp) if v != obj)
    if isinstance(obj, bool):
        return not obj
    if isinstance(obj, list):
        return [v + 1 if isinstance(v, int) else v / 2 for v in obj]
    if isinstance(obj, int):
        return obj * 2 if key.endswith(("image_size", "batch_size")) else obj + 1  # powers of two stay so
    if isinstance(obj, float):
        return obj / 2 if obj else 0.25
    # imagenet's model.name: a timm model, since model.drop_path (changed too) is read by timm models only
    return {"data.name": "fashion_mnist", "model.name": "timm:resnet34"}[key]


FAMILIES = ["mnist_mlp", "gan_mnist", *(pytest.param(r, marks=pytest.mark.heavy) for r in ["resnet_cifar", "pix2pix", "imagenet"])]


@pytest.mark.parametrize("recipe", FAMILIES)
def test_every_setting_a_checkpoint_fixes_is_refused_before_anything_is_written(tmp_path, recipe, capsys):
    task = load_recipe(recipe).task
    base = DEBUG(recipe) + [f"out_dir={tmp_path}", "train.max_steps=2", "train.ckpt_every_steps=2",
                            "train.eval_every_steps=2", "train.log_every_steps=2"]
    run(task, str(ROOT / "recipes" / f"{recipe}.py"), base)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cfg = parse_cli(task.Config, str(ROOT / "recipes" / f"{recipe}.py"), base).cfg
    keys = roles(task.Config)  # as declared on the fields; engine-dependent ones (Fixed.engine) aside
    fixed = [k for k, role in keys.items() if isinstance(role.resume, Fixed) and not role.resume.engine]
    model = [k for k in keys if k.startswith("model.") and keys[k].resume != NOT_COMPARED]
    assert model and set(model) <= set(fixed)  # the model section is fixed as a whole
    overrides = [f"{k}={changed_value(cfg, k)}".replace("'", "") for k in fixed]
    if "data.name=fashion_mnist" in overrides:  # the real data set, found offline (the synthetic one needs no files)
        overrides.append("data.root=/usr/share/datasets/fashion-mnist")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(task, str(ROOT / "recipes" / f"{recipe}.py"), base + overrides)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "cannot resume from" in err and "Nothing was written" in err and "init_from=" in err, err
    for key in fixed:
        assert f"  {key}: " in err, (key, err)
    assert "Traceback" not in err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # config.yaml, metrics, checkpoints: all as the first run left them


def test_each_fixed_key_alone_names_only_itself(tmp_path, capsys):
    task = load_recipe("mnist_mlp").task
    script = str(ROOT / "recipes" / "mnist_mlp.py")
    base = DEBUG("mnist_mlp") + [f"out_dir={tmp_path}", "train.max_steps=2"]
    run(task, script, base)
    for override in ["optim.name=adamw", "model.hidden=[32]", "train.batch_size=64", "seed=1"]:
        capsys.readouterr()
        with pytest.raises(SystemExit):
            run(task, script, base + [override])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  ")]
        assert len(lines) == 1 and lines[0].startswith(f"  {override.split('=')[0]}: "), lines
    assert torch.load(tmp_path / "checkpoints" / "step_00000002" / "state.pt", weights_only=True)["step"] == 2


def test_a_finished_run_resumed_with_fewer_steps_says_it_is_complete(tmp_path):
    out_dir = tmp_path / "r"
    run_inprocess("mnist_mlp", f"out_dir={out_dir}", "train.max_steps=4", "train.eval_every_steps=4")
    out = run_inprocess("mnist_mlp", f"out_dir={out_dir}", "train.max_steps=2").stdout
    assert "run mnist_mlp is already complete: step 4, past this config's 2 steps; nothing to train" in out, out
    assert ("changed since the checkpoint, not applied, the run is complete (step 4 of this config's 2): "
            "train.max_steps 4 -> 2") in out, out
    assert "in effect from now" not in out and "[train]" not in out
