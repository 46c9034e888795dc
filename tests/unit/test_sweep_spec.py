"""A bad sweep spec is exit 2 with one line naming the problem, before the sweep directory exists; a sweep
directory in use by another sweep, or holding another spec, is refused the same way. In-process."""
import os
import subprocess
import sys

import pytest
import yaml

from common.sweep.__main__ import main
from support.runs import ROOT

GOOD = {"recipe": "mnist_mlp", "config": "recipes/configs/mnist_mlp_debug.yaml", "overrides": {"device": "cpu"},
        "metric": "val/acc1", "n_trials": 2,
        "params": {"optim.lr": {"low": 1e-4, "high": 0.1, "log": True}, "optim.name": {"choices": ["sgd", "adamw"]}}}


def sweep(tmp_path, capsys, monkeypatch, spec: dict, *args: str):
    monkeypatch.chdir(ROOT)  # config paths are relative to the working directory
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = main([str(path), "--dir", str(tmp_path / "sweep"), *args])
    return code, capsys.readouterr().err


def changed(**entries):
    spec = yaml.safe_load(yaml.safe_dump(GOOD))
    for key, value in entries.items():
        *path, last = key.split("/")
        d = spec
        for p in path:
            d = d[p]
        if value is None:
            del d[last]
        else:
            d[last] = value
    return spec


BAD = [  # (what changes, the words the one line must hold)
    (changed(**{"params/optim.lrr": {"low": 0.1, "high": 1}}), ["params.optim.lrr", "did you mean 'optim.lr'"]),
    (changed(**{"params/optim.lr": {"low": 0.1, "high": 0.1}}), ["params.optim.lr", "empty"]),
    (changed(**{"params/optim.lr": {"low": 0.1, "high": 0.01}}), ["params.optim.lr", "low 0.1 > high 0.01"]),
    (changed(**{"params/optim.lr": {"low": 0, "high": 0.1, "log": True}}), ["params.optim.lr", "log range needs low > 0"]),
    (changed(**{"params/optim.lr": {"low": -1, "high": 0.1}}), ["params.optim.lr", "optim.lr"]),  # the key's own range
    (changed(**{"params/optim.name": {"choices": ["sgd", "adamx"]}}), ["params.optim.name", "adamx"]),
    (changed(**{"params/train.batch_size": {"low": 0.5, "high": 8}}), ["params.train.batch_size", "low must be an int"]),
    (changed(**{"params/optim.name": {"choices": []}}), ["params.optim.name", "non-empty"]),
    (changed(metric="val/fd"), ["metric 'val/fd'", "val/acc1"]),
    (changed(direction="up"), ["direction 'up'"]),
    (changed(sampler="cmaes"), ["unknown sampler 'cmaes'", "tpe"]),
    (changed(pruner="patient"), ["unknown pruner 'patient'", "median"]),
    (changed(pruner={"name": "median", "n_startup": 1}), ["pruner median has no option 'n_startup'", "n_startup_trials"]),
    (changed(sampler="grid"), ["params.optim.lr", "grid sampler needs a finite set"]),
    (changed(sampler="grid", params={"optim.name": {"choices": ["sgd", "adamw"]}}, n_trials=3), ["n_trials 3 > the 2 points"]),
    (changed(n_trials=0), ["n_trials", ">= 1"]),
    (changed(overrides={"out_dir": "runs/x"}), ["overrides set 'out_dir'"]),
    (changed(overrides={"train.max_stepz": 3}), ["train.max_stepz", "train.max_steps"]),
    (changed(config="recipes/configs/nope.yaml"), ["config file not found"]),
    (changed(recipe="nope"), ["recipe 'nope' not found"]),
    (changed(paramz={}), ["unknown entry 'paramz'"]),
    (changed(params={}), ["'params' is empty"]),
]


@pytest.mark.parametrize("spec,words", BAD, ids=[" ".join(w)[:40] for _, w in BAD])
def test_a_bad_spec_is_exit_2_with_one_line_before_anything_is_written(spec, words, tmp_path, capsys, monkeypatch):
    code, err = sweep(tmp_path, capsys, monkeypatch, spec)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "sweep").exists()


def test_the_good_spec_passes_the_checks(tmp_path, capsys, monkeypatch):
    """The control for the table above: the same spec unchanged gets past every check (to the lock, held here)."""
    (tmp_path / "sweep").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from common.sweep.__main__ import lock; lock(Path(sys.argv[1])); print('held', flush=True); "
                               "sys.stdin.read()", str(tmp_path / "sweep")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline() == "held\n"
        code, err = sweep(tmp_path, capsys, monkeypatch, GOOD)
    finally:
        holder.communicate("")
    assert code == 2 and f"in use by another sweep (pid {holder.pid})" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["sweep.lock"]  # nothing started


def test_a_sweep_dir_of_another_spec_is_refused(tmp_path, capsys, monkeypatch):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "spec.yaml").write_text(yaml.safe_dump(changed(n_trials=5)))
    code, err = sweep(tmp_path, capsys, monkeypatch, GOOD)
    assert code == 2 and "holds a sweep of another spec" in err, err
    assert not (tmp_path / "sweep" / "trials").exists() and not (tmp_path / "sweep" / "study.db").exists()
