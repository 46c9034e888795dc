"""The published recipes as configs: docs/results.md's flag-by-flag tables equal what --dry-run resolves."""
import re

import pytest
import yaml

from common.fields import flatten
from support.inprocess import run_inprocess
from support.outputs import metrics
from support.runs import ROOT

PAGE = ROOT / "docs" / "results.md"
CONFIGS = ["imagenet_resnet50_tv2", "imagenet_deit_small"]


def table(name: str) -> dict[str, object]:
    """{dtrain key: value} of the page's table for recipes/configs/<name>.yaml."""
    text = PAGE.read_text()
    body = re.search(rf"<!-- table {name}: begin -->\n(.*?)<!-- table {name}: end -->", text, re.S)
    assert body, f"docs/results.md has no table for {name}"
    rows = {}
    for line in body.group(1).splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key, value = re.fullmatch(r"`([\w.]+)`", cells[2]), re.fullmatch(r"`(.*)`", cells[3])
        assert key and value, f"{name}: row without a `key` and a `value`: {line}"
        rows[key.group(1)] = yaml.safe_load(value.group(1))
    return rows


def resolved(name: str, tmp_path) -> dict:
    proc = run_inprocess("imagenet", "--dry-run", "--config", str(ROOT / "recipes" / "configs" / f"{name}.yaml"),
                         f"out_dir={tmp_path / 'run'}", config=None)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout[proc.stdout.index("# resolved config"):]
    return flatten(yaml.safe_load(text.split("\nrank ")[0]))


@pytest.mark.parametrize("name", CONFIGS)
def test_the_table_is_what_the_config_resolves_to(name, tmp_path):
    rows, cfg = table(name), resolved(name, tmp_path)
    assert {k: cfg.get(k, "<missing>") for k in rows} == rows
    # Every key the YAML sets is in the table: the page and the file cannot drift apart.
    set_here = set(flatten(yaml.safe_load((ROOT / "recipes" / "configs" / f"{name}.yaml").read_text())))
    assert set_here - {"out_dir", "data.root"} <= set(rows)


def test_the_ema_decay_is_torchvisions_after_its_adjustment(tmp_path):
    """torchvision's train.py: alpha = 1 - decay, times world x batch x ema_steps / epochs, capped at 1."""
    world, per_gpu, steps, epochs, decay = 8, 128, 32, 600, 0.99998
    alpha = min(1.0, (1 - decay) * world * per_gpu * steps / epochs)
    assert table("imagenet_resnet50_tv2")["train.ema_decay"] == pytest.approx(1 - alpha, abs=5e-8)


@pytest.mark.parametrize("name,batch", [("imagenet_resnet50_tv2", 8), ("imagenet_deit_small", 6)])
def test_each_config_trains_with_all_its_knobs_on_a_small_generated_tree(name, batch, tmp_path):
    """Every knob of the config at once (policy, erasing, MixUp/CutMix, repeated augmentation, the EMA's
    schedule, the optimizer), on 32 px crops of a generated tree: the run finishes and evaluates at its end."""
    proc = run_inprocess("imagenet", "--config", str(ROOT / "recipes" / "configs" / f"{name}.yaml"),
                         "data.name=synthetic", f"data.root={tmp_path / 'tree'}", f"out_dir={tmp_path / 'run'}",
                         "data.train_crop=32", "data.val_resize=40", "data.val_crop=32", "data.workers=0",
                         f"train.batch_size={batch}", "train.eval_batch_size=16", "train.max_steps=3",
                         "train.ema_every_steps=1", "optim.warmup_steps=1", "train.log_every_steps=1", config=None)
    assert proc.returncode == 0, proc.stderr
    val = [m for m in metrics(tmp_path / "run") if m["split"] == "val"]
    assert [m["step"] for m in val] == [3] and 0 <= val[0]["acc1"] <= 100
