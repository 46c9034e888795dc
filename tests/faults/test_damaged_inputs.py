"""Every file the product reads from a user, damaged every way that applies to it: exit code 2 and one
line naming the file, never a traceback, and nothing of a pickled payload runs.

The table is KINDS x DAMAGES. Good files come from real tiny runs (debug configs) made once per module;
each case damages a copy. Cases run in-process through common.entry.run, except "unreadable": the test
runs as root, which reads any file, so that case runs the recipe as a process without the capabilities
that bypass file permissions (setpriv). A new reader of a user's file adds a kind here (docs/reliability.md).
"""
import hashlib
import json
import pickle
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import torchvision

from common.data.datasets import synthetic_tree
from common.entry import run
from support.runs import ROOT, load_recipe, recipe_command, run_recipe

MLP, IMAGENET = "mnist_mlp", "imagenet"
HUB_MODEL = "squeezenet1_1"  # the smallest torchvision classifier with ImageNet weights
STEP = "step_00000016"  # mnist_mlp_debug's last checkpoint
SHARD_STEP = "step_00000008"


def _argv(recipe: str, *overrides: str) -> list[str]:
    return ["--config", str(ROOT / "recipes" / "configs" / f"{recipe}_debug.yaml"), "device=cpu",
            "train.progress=false", *overrides]


def _in_process(recipe: str, argv: list[str]) -> None:
    run(load_recipe(recipe).task, str(ROOT / "recipes" / f"{recipe}.py"), argv)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Intact files of every kind: a run (checkpoints), its exports, a config, hub weights, an image tree."""
    root = tmp_path_factory.mktemp("good")
    _in_process(MLP, _argv(MLP, f"out_dir={root / 'run'}"))
    for suffix in ("safetensors", "pt"):
        _in_process(MLP, ["--export", str(root / "run"), "--to", str(root / f"w.{suffix}"), "device=cpu"])
    shutil.copy(ROOT / "recipes" / "configs" / f"{MLP}_debug.yaml", root / "config.yaml")
    torch.save(torchvision.models.get_model(HUB_MODEL).state_dict(), root / "hub.pth")
    synthetic_tree(root / "tree", classes=2, train=8, val=4)
    synthetic_tree(root / "imagenet_tree")  # imagenet_debug's data, made once here (real runs make it on first use)
    return root


class Evil:
    """A pickled global: unpickling it with full power would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def reseal(ckpt: Path) -> None:
    """Rewrite a checkpoint's MANIFEST.json to match its files: content damage that the checksums do not
    catch (what another tool or a hand edit leaves)."""
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    for name in manifest["files"]:
        f = ckpt / name
        manifest["files"][name] = {"size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))


@dataclass
class Case:
    """A fresh copy of a good file in the place a command reads it, the command, and how this kind of file
    holds the wrong type or a pickled global."""
    target: Path  # the file the damage is done to
    recipe: str
    argv: list[str]
    env: dict
    wrong_type: Callable[[Path], None] | None = None
    pickled: Callable[[Path, Path], None] | None = None  # (target, marker)


def _checkpoint(good, tmp, file: str) -> Case:
    run_dir = tmp / "run"
    shutil.copytree(good / "run", run_dir)
    ckpt = run_dir / "checkpoints" / STEP

    def state_without_config(t):
        sd = torch.load(t, weights_only=True)
        del sd["config"]
        torch.save(sd, t)
        reseal(ckpt)

    def state_with_code(t, marker):
        sd = torch.load(t, weights_only=True)
        sd["extra"] = Evil(marker)
        torch.save(sd, t)
        reseal(ckpt)

    argv = ["--evaluate", str(ckpt), "device=cpu", "train.progress=false"]
    if file == "state.pt":
        return Case(ckpt / file, MLP, argv, {}, state_without_config, state_with_code)
    return Case(ckpt / file, MLP, argv, {}, lambda t: t.write_text(json.dumps([{"state.pt": 1}])))


def _export(good, tmp, suffix: str) -> Case:
    target = tmp / f"w.{suffix}"
    shutil.copy(good / f"w.{suffix}", target)
    argv = _argv(MLP, f"out_dir={tmp / 'ft'}", f"init_from={target}")

    def wrong_type(t):
        if suffix == "pt":
            blob = torch.load(t, weights_only=True)
            torch.save({"state_dict": list(blob["state_dict"].values()), "meta": blob["meta"]}, t)
        else:
            from safetensors.torch import load_file, save_file
            from safetensors import safe_open
            with safe_open(str(t), framework="pt") as f:
                meta = json.loads(f.metadata()["dtrain"])
            save_file(load_file(str(t)), str(t), metadata={"dtrain": json.dumps({**meta, "model": ["net"]})})

    def with_code(t, marker):
        blob = torch.load(t, weights_only=True)
        torch.save({**blob, "extra": Evil(marker)}, t)

    return Case(target, MLP, argv, {}, wrong_type, with_code if suffix == "pt" else None)


def _hub(good, tmp) -> Case:
    home = tmp / "torch"
    url = torchvision.models.get_model_weights(HUB_MODEL).DEFAULT.url
    target = home / "hub" / "checkpoints" / Path(url).name
    target.parent.mkdir(parents=True)
    shutil.copy(good / "hub.pth", target)
    argv = _argv(IMAGENET, f"out_dir={tmp / 'ft'}", f"data.root={good / 'imagenet_tree'}", f"model.name={HUB_MODEL}",
                 "model.pretrained=true")
    return Case(target, IMAGENET, argv, {"TORCH_HOME": str(home)},
                lambda t: torch.save(list(torch.load(t, weights_only=True).values()), t),
                lambda t, marker: torch.save({**torch.load(t, weights_only=True), "extra": Evil(marker)}, t))


def _config(good, tmp) -> Case:
    target = tmp / "config.yaml"
    shutil.copy(good / "config.yaml", target)
    # A damaged file that slips through would train: make that quick to fail with the settings the file had.
    return Case(target, MLP, ["--config", str(target), "device=cpu", f"out_dir={tmp / 'r'}", "data.name=synthetic",
                              "train.max_steps=2", "train.progress=false"], {},
                lambda t: t.write_text("- train.max_steps: 16\n- optim.lr: 0.05\n"),
                lambda t, marker: t.write_text(f"train: !!python/object/apply:builtins.open ['{marker}', 'w']\n"))


def _image(good, tmp, streaming: bool) -> Case:
    tree = tmp / "tree"
    shutil.copytree(good / "tree", tree)
    target = next(iter(sorted((tree / "train").rglob("*.jpg"))))
    if streaming:  # DataLoader workers decode; 2 steps of 8 read all 16 training images
        return Case(target, IMAGENET, _argv(IMAGENET, f"out_dir={tmp / 'r'}", "data.name=imagefolder",
                                            f"data.root={tree}", "train.max_steps=2"), {})
    return Case(target, MLP, _argv(MLP, f"out_dir={tmp / 'r'}", "data.name=folder", f"data.root={tree}"), {})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Runs whose checkpoints hold each rank's files: DeepSpeed ZeRO-2 and FSDP, 2 processes, 8 steps."""
    root = tmp_path_factory.mktemp("shards")
    for engine, extra in (("deepspeed", ["deepspeed_config=launch/deepspeed/zero2.json"]), ("fsdp", [])):
        run_recipe(MLP, f"out_dir={root / engine}", f"engine={engine}", "train.max_steps=8", *extra, nproc=2)
    return root


def _shard(shards, tmp, engine: str, file: str) -> Case:
    ckpt = tmp / engine / SHARD_STEP
    shutil.copytree(shards / engine / "checkpoints" / SHARD_STEP, ckpt)

    def rewrite(t, value):
        if t.suffix == ".pt":
            torch.save(value, t)
        else:
            t.write_bytes(pickle.dumps(value))
        reseal(ckpt)

    def with_code(t, marker):  # DeepSpeed's own files hold its classes: load this trusted copy in full
        rewrite(t, {**torch.load(t, weights_only=False), "extra": Evil(marker)} if t.suffix == ".pt" else Evil(marker))

    return Case(ckpt / file, MLP, ["--evaluate", str(ckpt), "device=cpu", "train.progress=false"], {},
                lambda t: rewrite(t, [1, 2, 3]), with_code)


KINDS = {
    "checkpoint state.pt": lambda good, tmp: _checkpoint(good, tmp, "state.pt"),
    "checkpoint MANIFEST.json": lambda good, tmp: _checkpoint(good, tmp, "MANIFEST.json"),
    "export .safetensors": lambda good, tmp: _export(good, tmp, "safetensors"),
    "export .pt": lambda good, tmp: _export(good, tmp, "pt"),
    "hub weights": _hub,
    "config YAML": _config,
    "folder image": lambda good, tmp: _image(good, tmp, streaming=False),
    "folder image, streaming loader": lambda good, tmp: _image(good, tmp, streaming=True),
    "deepspeed partition": lambda shards, tmp: _shard(shards, tmp, "deepspeed",
                                                     "deepspeed/net/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"),
    "deepspeed model states": lambda shards, tmp: _shard(shards, tmp, "deepspeed",
                                                        "deepspeed/net/state/mp_rank_00_model_states.pt"),
    "fsdp .metadata": lambda shards, tmp: _shard(shards, tmp, "fsdp", "fsdp/.metadata"),
    "fsdp shard": lambda shards, tmp: _shard(shards, tmp, "fsdp", "fsdp/__1_0.distcp"),
}
SHARDED = {"deepspeed partition", "deepspeed model states", "fsdp .metadata", "fsdp shard"}


def _truncate(t: Path) -> None:
    data = t.read_bytes()
    t.write_bytes(data[:len(data) // 2])


def _garbage(t: Path) -> None:
    data = t.read_bytes()
    t.write_bytes(b"\xff\xfe garbage \x00" * 8 + data[96:])


def _directory(t: Path) -> None:
    t.unlink()
    t.mkdir()
    (t / "inside").write_text("a directory where the file should be")


DAMAGES = {
    "empty": lambda case, marker: case.target.write_bytes(b""),
    "truncated": lambda case, marker: _truncate(case.target),
    "garbage header": lambda case, marker: _garbage(case.target),
    "wrong type inside": lambda case, marker: case.wrong_type(case.target),
    "pickled global": lambda case, marker: case.pickled(case.target, marker),
    "directory": lambda case, marker: _directory(case.target),
    "unreadable": lambda case, marker: case.target.chmod(0),
}

# Combinations that do not apply, and why (each kind has every other damage).
IMAGES = {
    "wrong type inside": "an image is decoded by its content: any format PIL reads is an image",
    "pickled global": "images are not unpickled",
    "directory": "a directory in a class folder is listed into, not read as an image",
}
NOT_APPLICABLE = {**{(kind, d): why for kind in ("folder image", "folder image, streaming loader")
                     for d, why in IMAGES.items()},
    ("checkpoint MANIFEST.json", "pickled global"): "JSON holds no objects",
    ("export .safetensors", "pickled global"): "the format holds no objects, only tensors and a JSON header",
    ("fsdp shard", "wrong type inside"): "raw tensor bytes at the offsets .metadata gives: no type of its own",
    ("fsdp shard", "pickled global"): "its few non-tensor items are read by DCP with weights_only=True",
}
CASES = [(k, d) for k in KINDS for d in DAMAGES if (k, d) not in NOT_APPLICABLE]


def _heavy(kind: str, damage: str) -> bool:
    """Variants of what the default run covers: another file read the same way (one of DeepSpeed's files,
    an FSDP shard: both judged by the manifest first), the worker loader beyond one damage (tens of seconds each)."""
    return kind in ("deepspeed model states", "fsdp shard") or (kind == "folder image, streaming loader" and
                                                                damage != "empty")


def _names(err: str, target: Path) -> bool:
    """The message names the file: its path, or a directory above it and its path inside that one (a
    checkpoint and one of its files)."""
    return any(str(d) in err and str(target.relative_to(d)) in err for d in target.parents)


def _marks(kind: str, damage: str) -> list:
    """heavy where _heavy says; one xdist worker per module fixture (taken by name below, so conftest.py cannot
    see it): made once, not once per worker."""
    return [pytest.mark.heavy] * _heavy(kind, damage) + [pytest.mark.xdist_group(
        "damaged_shards" if kind in SHARDED else "damaged_good")]


@pytest.mark.parametrize("kind, damage", [pytest.param(k, d, id=f"{k}-{d}", marks=_marks(k, d)) for k, d in CASES])
def test_a_damaged_file_stops_with_exit_2_and_one_line_naming_it(kind, damage, tmp_path, capsys, monkeypatch, request):
    case = KINDS[kind](request.getfixturevalue("shards" if kind in SHARDED else "good"), tmp_path)
    marker = tmp_path / "PAYLOAD_RAN"
    DAMAGES[damage](case, marker)
    if damage == "unreadable":
        cmd, env = recipe_command(case.recipe, config=None, env=case.env)
        # Root reads any file: this process keeps uid 0 (the interpreter lives under /root) but loses the
        # capabilities that bypass permissions, so mode 000 refuses it as it refuses any user.
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd[:2], *case.argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
        code, err = proc.returncode, proc.stderr
    else:
        for k, v in case.env.items():
            monkeypatch.setenv(k, v)
        with pytest.raises(SystemExit) as e:
            _in_process(case.recipe, case.argv)
        code, err = e.value.code, capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(("error: ", "config error: "))]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, f"exit {code}\n{err[-3000:]}"
    assert _names(errors[0], case.target), errors[0]
    assert not marker.exists()
