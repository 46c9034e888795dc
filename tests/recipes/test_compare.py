"""python -m common.compare on real runs: the table's numbers are the runs' metrics.jsonl, the pictures
are real PNGs, a sweep directory stands for its trials (pruned ones shown so), bad input is exit 2.

Three mnist_mlp debug runs (optim.lr and optim.name set) are the trials of a sweep directory built to
its contract (trials/N run dirs, trials.json with one trial pruned and one waiting, spec.yaml); a gan_mnist run
without a judge (evaluations with no numbers) is another recipe.
"""
import csv
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from common.compare.__main__ import compare, main
from common.config import TrainConfig
from support.inprocess import run_inprocess
from support.outputs import metrics

# docs/usage.md's runs (optim.name=sgd is mnist_mlp's default, set here to be a differing key for certain)
TRIALS = [{"optim.lr": 0.1, "optim.name": "sgd"}, {"optim.lr": 0.01, "optim.name": "sgd"},
          {"optim.lr": 0.3, "optim.name": "adamw"}]
STATES = ["COMPLETE", "PRUNED", "COMPLETE"]
SPEC = """recipe: mnist_mlp
config: recipes/configs/mnist_mlp_debug.yaml
metric: val/acc1
params:
  optim.lr: {low: 1.0e-3, high: 0.5, log: true}
  optim.name: {choices: [sgd, adamw]}
"""
END = {"finished": "finished", "stopped_early": "stopped early", "pruned": "pruned", "preempted": "preempted"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    trials = []
    for n, (params, state) in enumerate(zip(TRIALS, STATES)):
        run_inprocess("mnist_mlp", f"out_dir={root}/trials/{n}", *(f"{k}={v}" for k, v in params.items()))
        value = max(r["acc1"] for r in metrics(root / "trials" / str(n)) if r["split"] == "val")
        trials.append({"number": n, "run_dir": f"trials/{n}", "params": params, "state": state,
                       "value": value if state == "COMPLETE" else None})
    trials.append({"number": 3, "run_dir": "trials/3", "params": {"optim.lr": 0.02, "optim.name": "adamw"},
                   "state": "WAITING", "value": None})
    (root / "trials.json").write_text(json.dumps(trials))
    (root / "spec.yaml").write_text(SPEC)
    return root


@pytest.fixture(scope="module")
def gan(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "gan"
    run_inprocess("gan_mnist", f"out_dir={out}", "eval.classifier=none")
    return out


def expected_status(rows):
    """The status the run's own rows give: its end row's (when fit() writes one), else incomplete."""
    ends = [r for r in rows if r["split"] == "end"]
    return END[ends[-1]["status"]] if ends else "incomplete"


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_the_tables_numbers_are_the_runs_metrics(sweep, tmp_path, monkeypatch, capsys):
    """docs/usage.md's command as written (run directories named runs/lr<lr>): runs/compare/ by default."""
    monkeypatch.chdir(tmp_path)
    names = [f"lr{t['optim.lr']}" for t in TRIALS]
    for n, name in enumerate(names):
        (tmp_path / "runs").mkdir(exist_ok=True)
        (tmp_path / "runs" / name).symlink_to(sweep / "trials" / str(n))
    assert main([f"runs/{name}" for name in names]) == 0
    printed = capsys.readouterr().out
    assert "wrote runs/compare/: compare.md, compare.csv, curves.png\n" in printed
    rows = read_csv(tmp_path / "runs" / "compare" / "compare.csv")
    header = list(rows[0])
    assert set(header[header.index("path") + 1:header.index("status")]) == {"optim.lr", "optim.name"}
    assert (tmp_path / "runs" / "compare" / "compare.md").read_text() in printed
    _assert_picture(tmp_path / "runs" / "compare" / "curves.png", (1000, 600))
    for row, name, params in zip(rows, names, TRIALS):
        run = tmp_path / "runs" / name
        m = metrics(run)
        val = [r for r in m if r["split"] == "val"]
        timed = [r for r in m if r["split"] in ("train", "val", "end")]
        best = max(val, key=lambda r: (r["acc1"], -r["step"]))  # the earliest step of the best, as best.json
        rates = [r["samples_per_s"] for r in m if r["split"] == "train"]
        assert row["run"] == name and row["path"] == f"runs/{name}"
        assert float(row["optim.lr"]) == params["optim.lr"] and row["optim.name"] == params["optim.name"]
        assert float(row["best val/acc1"]) == best["acc1"] and int(row["best_step"]) == best["step"]
        assert json.loads((run / "checkpoints" / "best.json").read_text())["step"] == best["step"]
        for k in ("loss", "acc1", "acc5"):
            assert float(row[f"final val/{k}"]) == val[-1][k]
        assert int(row["steps"]) == max(r["step"] for r in m) == 16
        assert float(row["wall_time_s"]) == timed[-1]["wall_time"] - timed[0]["wall_time"] > 0
        assert float(row["samples_per_s"]) == sum(rates) / len(rates)
        assert row["status"] == expected_status(m)
        md_row = f"| {name} | {params['optim.name']} | {params['optim.lr']:.4g} | {row['status']} | 16 |"
        assert md_row in printed, printed
        assert f"| {best['acc1']:.4g} | {best['step']} | {val[-1]['loss']:.4g} |" in printed


def _assert_picture(path, min_size=(700, 350)):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.load()
        assert min_size[0] <= im.width <= 2500 and min_size[1] <= im.height <= 1500, im.size  # legible, not sprawling
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.std() > 20, f"{path} is nearly blank"  # axes, lines and text on white
    assert (pixels < 128).mean() > 0.01  # dark ink: lines and text were drawn


def test_a_sweep_directory_means_its_trials_and_shows_pruned_ones(sweep, tmp_path, monkeypatch, capsys):
    """docs/usage.md's command as written, on a sweep directory at runs/my_sweep."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "my_sweep").symlink_to(sweep)
    assert main(["runs/my_sweep"]) == 0
    out = capsys.readouterr().out
    to = sweep / "compare"  # the default beside the trials
    assert "wrote runs/my_sweep/compare/: compare.md, compare.csv, curves.png, sweep.png\n" in out
    rows = read_csv(to / "compare.csv")
    assert [r["run"] for r in rows] == ["trial 0", "trial 1", "trial 2", "trial 3"]
    assert [r["status"] for r in rows[1:]] == ["pruned", expected_status(metrics(sweep / "trials" / "2")), "waiting"]
    assert float(rows[0]["trial_value"]) == max(r["acc1"] for r in metrics(sweep / "trials" / "0") if r["split"] == "val")
    assert rows[1]["trial_value"] == "" and rows[3]["steps"] == "" and rows[3]["optim.lr"] == "0.02"
    assert "| trial 1 | 0.01 | sgd | pruned |" in out and "| trial 3 | 0.02 | adamw | waiting | - | - |" in out
    _assert_picture(to / "curves.png", (1000, 600))
    _assert_picture(to / "sweep.png", (700, 350))


def test_another_recipe_and_a_run_without_eval_numbers(sweep, gan, tmp_path, capsys):
    assert main([str(sweep / "trials" / "0"), str(gan), "--to", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "note: these runs are of different recipes (mnist_mlp: 0; gan_mnist: gan)" in captured.err
    rows = read_csv(tmp_path / "compare.csv")
    assert [r["recipe"] for r in rows] == ["mnist_mlp", "gan_mnist"]
    assert rows[1]["best"] == "" and rows[1]["final val/acc1"] == "" and rows[1]["steps"] == "16"
    gan_line = next(line for line in captured.out.splitlines() if line.startswith("| gan |"))
    assert gan_line.endswith("| - | - | - | - |"), gan_line
    _assert_picture(tmp_path / "curves.png", (1000, 600))


@pytest.mark.parametrize("what", ["missing", "empty", "checkpoints"])
def test_a_path_that_is_no_run_is_exit_2_naming_it(sweep, tmp_path, capsys, what):
    bad = tmp_path / what
    if what != "missing":
        bad.mkdir()
    if what == "checkpoints":
        bad = sweep / "trials" / "0" / "checkpoints"
    assert main([str(sweep / "trials" / "0"), str(bad), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bad} ") and "Traceback" not in err
    assert ("does not exist" if what == "missing" else "is not a run directory") in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(TrainConfig, "early_stop_metric"), reason="needs early stopping (train.early_stop_*)")
def test_a_run_stopped_early_says_so(tmp_path):
    out = tmp_path / "stopped"
    run_inprocess("mnist_mlp", f"out_dir={out}", "train.max_steps=32", "train.eval_every_steps=2",
                  "train.early_stop_metric=val/loss", "train.early_stop_patience=1", "train.early_stop_min_delta=1e9")
    compare([str(out), "--to", str(tmp_path / "cmp")])
    row, = read_csv(tmp_path / "cmp" / "compare.csv")
    assert row["status"] == "stopped early" and int(row["steps"]) < 32
    assert math.isfinite(float(row["best val/acc1"]))
