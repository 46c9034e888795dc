"""--export and --evaluate of a DeepSpeed ZeRO-3 checkpoint (2 CPU processes over gloo, `deepspeed` launcher); ZeRO-2's
are in the default run (tests/launch/test_engines.py, on that file's run).

The partitions of both ranks are gathered on one process (common.engines.deepspeed_files.read_full_weights,
after every DeepSpeed file passed the weights_only check); the exported state_dict must equal the
weights DeepSpeed's own zero_to_fp32 reconstructs, and an evaluation must give training's last figures.
"""
import json

import pytest
import torch

from common.formats.export import read_export
from common.lifecycle import deployed
from support.inprocess import run_inprocess
from support.outputs import metrics
from support.launchutil import deepspeed_weights, launch


@pytest.mark.heavy
def test_deepspeed_zero3_run_exports_and_evaluates(tmp_path):
    out = tmp_path / "ds"
    launch("deepspeed", "mnist_mlp", out, "deepspeed_config=launch/deepspeed/zero3.json")
    exported = tmp_path / "w.safetensors"
    launch("python", "mnist_mlp", None, "--export", str(out), "--to", str(exported), nproc=1, config="debug")
    best = json.loads((out / "checkpoints" / "best.json").read_text())["step"]  # what a run directory means
    weights, meta = read_export(exported)
    gathered = deepspeed_weights(out, best)
    assert weights.keys() == gathered.keys() and all(torch.equal(weights[k], gathered[k]) for k in weights)
    assert meta["weights"] == "raw" and meta["step"] == best  # no EMA in this run: the trained weights
    # The default run exports an FSDP checkpoint to .pt2 (tests/dist/test_fsdp.py).
    run_inprocess("mnist_mlp", "--export", str(out), "--to", str(tmp_path / "m.pt2"), config=None)
    program = torch.export.load(str(tmp_path / "m.pt2")).module().state_dict()
    assert program.keys() == gathered.keys() and all(torch.equal(program[k], gathered[k]) for k in program)
    assert deployed.read_sidecar(tmp_path / "m.pt2")["check"]["max_abs_diff"] <= 1e-4
    proc = launch("torchrun", "mnist_mlp", None, "--evaluate", str(out), nproc=2)
    assert "raw weights" in proc.stdout
    val = next(m for m in metrics(out) if m["split"] == "val" and m["step"] == best)
    ev = [m for m in metrics(out) if m["split"] == "eval"][-1]
    assert ev["step"] == best and ev["acc1"] == val["acc1"] and abs(ev["loss"] - val["loss"]) <= 1e-6 * val["loss"]
