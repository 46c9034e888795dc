"""The after-training flags and files: each misuse is a clear error naming the flag or key and the fix
(parse_cli and the readers, in-process; the commands themselves run in tests/recipes/test_after_training.py)."""
import os
import stat
from pathlib import Path

import pytest
import torch

from common.cli import parse_cli
from common.config import ConfigError, UserError
from common.engines import full_weights_reader
from common.formats.export import read_export, write_export
from common.train.init import init_from
from support.runs import ROOT, load_recipe

MLP = load_recipe("mnist_mlp")
SCRIPT = str(ROOT / "recipes" / "mnist_mlp.py")


@pytest.mark.parametrize("argv, message", [
    (["--evaluate", "r", "--export", "r"], "--evaluate and --export are two commands"),
    (["--evaluate"], "--evaluate needs one value: --evaluate RUN_DIR_OR_CHECKPOINT"),
    (["--export", "r", "--to"], "--to needs one value: --to FILE (--export: .safetensors, .pt, .pt2 or .onnx; --predict: a CSV)"),
    (["--evaluate", "r", "--dry-run"], "--dry-run is for training; --evaluate reads the checkpoint's config"),
    (["--evaluate", "r", "--to", "w.pt"], "--to is about the file --export or --predict writes"),
    (["--evaluate", "r", "--overwrite"], "--overwrite is about the file --export or --predict writes"),
    (["--overwrite"], "--overwrite goes with --export or --predict: e.g. --export runs/<name> --overwrite"),
    (["--to", "w.pt"], "--to goes with --export or --predict: e.g. --export runs/<name> --to FILE"),
    (["--predict", "r", "--export", "r"], "--export and --predict are two commands"),
    (["--predict", "r"], "--predict needs the images: --predict r --input PATH"),
    (["--predict", "r", "--input", "p", "--top-k", "0"], "--top-k '0': give a whole number of classes >= 1"),
    (["--predict", "r", "--input", "p", "--top-k", "two"], "--top-k 'two': give a whole number"),
    (["--input", "p"], "--input goes with --predict: e.g. --predict runs/<name> --input PATH"),
    (["--export", "r", "--top-k", "3"], "--top-k goes with --predict: --predict RUN --input PATH --top-k"),
])
def test_flag_misuse_says_how_to_write_it(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_cli(MLP.Config, SCRIPT, argv)


def test_flags_parse_with_equals_and_record_the_users_keys():
    cli = parse_cli(MLP.Config, SCRIPT, ["--export=runs/x", "--to=w.pt", "--weights=raw", "device=cpu"])
    assert (cli.action, cli.source, cli.to, cli.weights, cli.replace) == ("export", Path("runs/x"), Path("w.pt"), "raw", False)
    assert parse_cli(MLP.Config, SCRIPT, ["--export", "runs/x", "--overwrite"]).replace
    assert cli.user_keys == {"device"}
    assert parse_cli(MLP.Config, SCRIPT, []).action == "train"
    cli = parse_cli(MLP.Config, SCRIPT, ["--predict=runs/x", "--input", "photos", "--top-k=3", "--to", "p.csv"])
    assert (cli.action, cli.source, cli.input, cli.top_k, cli.to) == ("predict", Path("runs/x"), Path("photos"), 3, Path("p.csv"))


def test_a_file_that_is_not_an_export_is_named(tmp_path):
    bad = tmp_path / "w.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(UserError, match=f"{bad} is incomplete: the file has no 'state_dict'; give a file written by --export: .* --export RUN_DIR --to FILE"):
        read_export(bad)


def test_init_from_a_file_of_other_models_names_both(tmp_path):
    f = tmp_path / "g.safetensors"
    write_export(f, {"w": torch.zeros(2)}, {"recipe": "gan_mnist", "model": "G", "step": 1, "weights": "raw"})
    cfg = parse_cli(MLP.Config, SCRIPT, [f"init_from={f}", "resume=none"]).cfg
    with pytest.raises(UserError, match=r"holds weights for \['G'\], this recipe's models are \['net'\]"):
        init_from(cfg, None, {"net": torch.nn.Linear(2, 2)})


def test_an_unknown_engine_in_a_checkpoint_is_named():
    with pytest.raises(ConfigError, match="written with engine='fsdp2', which this version does not know"):
        full_weights_reader("fsdp2")


def test_unwritable_export_path_names_the_fix(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="could not write .* choose another file with --to FILE"):
        write_export(tmp_path / "file" / "w.pt", {"w": torch.zeros(1)}, {})


def test_a_corrupt_pretrained_file_is_named(tmp_path, monkeypatch):
    from common.models.pretrained import weights_file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, url, _ = weights_file("resnet18")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    mod = load_recipe("imagenet")
    with pytest.raises(UserError, match=f"{path} cannot be read .* delete it and fetch it again from {url}"):
        mod.build_model(mod.ModelConfig(name="resnet18", pretrained=True), (3, 32, 32), 3)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_exports_get_the_mode_the_umask_gives_in_both_formats(tmp_path, umask):
    old = os.umask(umask)
    try:
        for suffix in (".safetensors", ".pt"):
            write_export(tmp_path / f"w{suffix}", {"w": torch.zeros(2)}, {"step": 1})
            assert stat.S_IMODE((tmp_path / f"w{suffix}").stat().st_mode) == 0o666 & ~umask, suffix
    finally:
        os.umask(old)
