"""After training: --evaluate, --export and init_from on a real 2-process DDP run.

One mnist_mlp debug run (torchrun, 2 CPU processes over gloo, EMA on) is evaluated on 1 and 2
processes, exported (EMA and raw), and used to warm-start a run with another class count. Errors
run in-process through common.entry.run: exit code 2 and a message naming the key and the fix.
"""
import json
import math

import pytest
import torch

from common.entry import run
from common.fields import APPLIED, roles
from common.formats.export import read_export
from common.lifecycle import deployed
from common.lifecycle.export import load_model
from support.inprocess import run_inprocess
from support.runs import load_recipe, run_recipe
from support.outputs import final_weights, metrics

STEPS = 16  # mnist_mlp_debug: checkpoints at 8 and 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("after") / "run"
    # The best checkpoint by the lowest val loss: the last one here (acc1 reaches 100 early and ties after).
    run_recipe("mnist_mlp", f"out_dir={out}", "train.ema_decay=0.9", "ckpt.best_metric=val/loss",
               "ckpt.best_mode=min", nproc=2)
    assert json.loads((out / "checkpoints" / "best.json").read_text())["step"] == STEPS
    return out


def _evaluate(out, *args, nproc=1):
    if nproc == 1:
        return run_inprocess("mnist_mlp", "--evaluate", str(out), *args, config=None)
    return run_recipe("mnist_mlp", "--evaluate", str(out), *args, nproc=nproc, config=None)


def _rows(out, split):
    return [m for m in metrics(out) if m["split"] == split]


def test_evaluate_on_one_and_two_processes_gives_the_training_runs_figures(trained):
    val = _rows(trained, "val")[-1]
    two = _evaluate(trained, nproc=2).stdout
    one = _evaluate(trained).stdout
    assert f"evaluated {trained}/checkpoints/step_{STEPS:08d} (the best checkpoint" in one and "ema weights" in one
    assert f"appended to {trained}/metrics.jsonl" in two
    rows = _rows(trained, "eval")[-2:]
    for row in rows:
        assert row["step"] == STEPS and row["weights"] == "ema" and row["checkpoint"].endswith(f"step_{STEPS:08d}")
        assert row["acc1"] == val["acc1"]
    assert rows[0]["loss"] == val["loss"]  # 2 processes: the same shards and batches as training's evaluation
    assert math.isclose(rows[1]["loss"], val["loss"], rel_tol=1e-6)  # 1 process: one batch order further


def test_evaluate_raw_weights_and_an_older_checkpoint(trained):
    out = _evaluate(f"{trained}/checkpoints/step_00000008", "--weights", "raw", "train.max_steps=99").stdout
    assert "(the checkpoint given; raw weights)" in out
    assert "--evaluate ignores training settings: train.max_steps" in out
    row = _rows(trained, "eval")[-1]
    assert row["step"] == 8 and row["weights"] == "raw"
    ema_at_8 = [m for m in _rows(trained, "val") if m["step"] == 8][0]
    assert row["loss"] != ema_at_8["loss"]  # raw is not the EMA copy training evaluated


def test_export_gives_the_trained_weights_without_prefixes(trained, tmp_path):
    run_inprocess("mnist_mlp", "--export", str(trained), "--weights", "raw", "--to", str(tmp_path / "raw.pt"), config=None)
    run_inprocess("mnist_mlp", "--export", str(trained), config=None)
    raw, meta = read_export(tmp_path / "raw.pt")
    trained_raw = final_weights(trained)
    assert raw.keys() == trained_raw.keys() and all(torch.equal(raw[k], trained_raw[k]) for k in raw)
    assert meta["weights"] == "raw" and meta["recipe"] == "mnist_mlp" and meta["num_classes"] == 10
    assert meta["input"] == {"shape": [1, 28, 28], "scale": "uint8 / 255, then (x - mean) / std per channel",
                             "mean": [0.5], "std": [0.25], "pad_to": 0}
    assert meta["config"]["model"]["hidden"] and meta["config"]["train"]["ema_decay"] == 0.9
    ema, meta = read_export(trained / "export" / f"mnist_mlp-step_{STEPS:08d}-ema.safetensors")
    state = torch.load(trained / "checkpoints" / f"step_{STEPS:08d}" / "state.pt", weights_only=True)
    assert ema.keys() == raw.keys() and meta["weights"] == "ema"
    assert all(torch.equal(ema[k], state["ema"]["net"][f"module.{k}"]) for k in ema)


def test_init_from_another_class_count_reinitialises_the_head_and_trains(trained, tmp_path):
    args = (f"out_dir={tmp_path / 'ft'}", f"init_from={trained}", "data.synthetic_classes=5", "train.max_steps=8")
    out = run_inprocess("mnist_mlp", *args).stdout
    assert f"init_from: weights from {trained}/checkpoints/step_{STEPS:08d} (the best checkpoint" in out
    assert "net: loaded 4 of 6 tensors from init_from=" in out
    assert "re-initialised (shape differs; this run's fresh init is kept): 7.weight [10, 1024] -> [5, 1024], " \
           "7.bias [10] -> [5]" in out
    assert [m["step"] for m in metrics(tmp_path / "ft") if m["split"] == "train"][-1] == 8
    again = run_inprocess("mnist_mlp", *args, "train.max_steps=12").stdout
    assert f"init_from={trained} ignored: this run resumes from {tmp_path / 'ft'}/checkpoints/step_00000008" in again
    assert "init_from: weights" not in again


def test_init_from_an_export_loads_exactly_its_weights(trained, tmp_path):
    """The warm-start reader on an exported file: every tensor loaded, bit for bit."""
    run_inprocess("mnist_mlp", "--export", str(trained), "--weights", "raw", "--to", str(tmp_path / "w.safetensors"),
                  config=None)
    mod = load_recipe("mnist_mlp")
    from common.models.matching import load_matching
    from common.train.init import read_init
    weights, source = read_init(str(tmp_path / "w.safetensors"))
    model = mod.build_model(mod.ModelConfig(), (1, 28, 28), 10)
    assert load_matching(model, weights["net"], "x") == ["loaded 6 of 6 tensors from x"]
    assert all(torch.equal(v, weights["net"][k]) for k, v in model.state_dict().items())
    assert "(mnist_mlp, step 16, raw weights)" in source


def _fails(capsys, recipe, *argv):
    mod = load_recipe(recipe)
    with pytest.raises(SystemExit) as e:
        run(mod.task, mod.task.script, [*argv, "device=cpu", "train.progress=false"])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_evaluate_refuses_settings_that_change_the_model(trained, capsys):
    err = _fails(capsys, "mnist_mlp", "--evaluate", str(trained), "model.hidden=[32]", "data.synthetic_test=8")
    assert "model.hidden: checkpoint [1024, 1024], given [32]" in err and "data.synthetic_test: checkpoint 256, given 8" in err
    applied = [k for k, role in roles(load_recipe("mnist_mlp").Config).items() if role.evaluate == APPLIED]
    assert "data.root" in applied and f"Drop them (only {', '.join(applied)} may differ)" in err
    assert "init_from=RUN_DIR" in err


def test_errors_name_the_flag_or_key_and_the_fix(trained, tmp_path, capsys):
    err = _fails(capsys, "mnist_mlp", "--evaluate", str(tmp_path))
    assert f"--evaluate {tmp_path}: no valid checkpoint there; give a run directory" in err
    err = _fails(capsys, "mnist_cnn", "--export", str(trained))
    assert "written by recipe 'mnist_mlp'; run recipes/mnist_mlp.py --export" in err
    err = _fails(capsys, "mnist_mlp", "--export", str(trained), "--to", str(tmp_path / "w.h5"))
    assert "--to" in err and "must end in .safetensors (default), .pt, .pt2 (torch.export) or .onnx" in err
    err = _fails(capsys, "mnist_mlp", "--weights", "raw")
    assert "--weights goes with --export or --evaluate" in err
    err = _fails(capsys, "mnist_mlp", "--evaluate", str(trained), "--weights", "best")
    assert "--weights 'best': use --weights ema" in err
    err = _fails(capsys, "mnist_mlp", "--config", "recipes/configs/mnist_mlp_debug.yaml", f"out_dir={tmp_path / 'x'}",
                 f"init_from={tmp_path / 'nothing'}")
    assert f"init_from={str(tmp_path / 'nothing')!r} is not a run directory with a valid checkpoint" in err
    assert "init_from=none" in err
    err = _fails(capsys, "mnist_cnn", "--config", "recipes/configs/mnist_cnn_debug.yaml", f"out_dir={tmp_path / 'y'}",
                 f"init_from={trained}")
    assert f"init_from={trained} shares no weights with this model" in err and "same architecture" in err


def test_weights_ema_without_an_ema_copy_says_use_raw(trained):
    from common.config import UserError
    from common.train.weights import checkpoint_weights
    with pytest.raises(UserError, match="has no EMA copy .* use --weights raw"):
        checkpoint_weights(trained / "checkpoints" / f"step_{STEPS:08d}", {"ema": {}}, "ema")


def test_export_refuses_a_destination_inside_a_checkpoint_and_leaves_it_intact(trained, capsys):
    from common.formats.checkpoint import verify
    ckpt = trained / "checkpoints" / f"step_{STEPS:08d}"
    before = (ckpt / "state.pt").read_bytes()
    for to in (ckpt / "state.pt", ckpt / "w.safetensors", trained / "checkpoints" / "w.pt"):
        err = _fails(capsys, "mnist_mlp", "--export", str(trained), "--to", str(to), "--overwrite")
        assert f"--to {to} is inside {to.parent}, which holds the run's checkpoints" in err
        assert "choose a file outside it" in err and not to.with_name("w.pt").exists()
    assert (ckpt / "state.pt").read_bytes() == before and verify(ckpt) is None


def test_export_replaces_an_existing_file_only_with_overwrite(trained, tmp_path, capsys):
    to = tmp_path / "w.pt"
    to.write_text("an earlier export")
    err = _fails(capsys, "mnist_mlp", "--export", str(trained), "--to", str(to))
    assert f"{to} exists; add --overwrite to replace it, or choose another file with --to FILE" in err
    assert to.read_text() == "an earlier export"
    mod = load_recipe("mnist_mlp")
    run(mod.task, mod.task.script, ["--export", str(trained), "--to", str(to), "--overwrite", "device=cpu"])
    assert read_export(to)[1]["step"] == STEPS


def test_export_to_pt2_and_onnx_is_checked_and_loads_at_any_batch(trained, tmp_path):
    """Both programs from the DDP run: checked against eager before success, the sidecar beside each,
    and deployed.load's forward equal to the eager model at a batch size neither used."""
    run_inprocess("mnist_mlp", "--export", str(trained), "--to", str(tmp_path / "w.pt"), config=None)
    eager, info = load_model(tmp_path / "w.pt", load_recipe("mnist_mlp").task)
    x = info.preprocess(torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    for suffix in ("pt2", "onnx"):
        out = run_inprocess("mnist_mlp", "--export", str(trained), "--to", str(tmp_path / f"m.{suffix}"), config=None).stdout
        forward, meta = deployed.load(tmp_path / f"m.{suffix}")
        check = meta["check"]
        assert f"checked m.{suffix} against eager PyTorch on the first eval batch (32 rows) and at batch 1: max abs " \
               f"diff {check['max_abs_diff']:.2e}, tolerance {check['tolerance']:.1e}" in out
        assert check["max_abs_diff"] <= check["tolerance"] == pytest.approx(1e-4 * max(1, check["max_abs_output"]))
        assert check["batch_sizes"] == [32, 1] and meta["dynamic_batch"] is True
        assert meta["inputs"] == [{"name": "images", "dtype": "float32", "shape": ["batch", 1, 28, 28]}]
        assert {k: meta[k] for k in info.meta} == info.meta  # describe()'s metadata, as in the .pt export
        assert meta["weights"] == "ema" and meta["step"] == STEPS and meta["recipe"] == "mnist_mlp"
        assert meta["opset"] >= 18 if suffix == "onnx" else meta["opset"] is None
        with torch.no_grad():
            assert (forward(x) - eager(x)).abs().max().item() <= check["tolerance"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json", "m.pt2", "m.pt2.json", "w.pt"]
