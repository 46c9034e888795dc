"""A sweep trial's run prunes itself (common/train/trial.py): with DTRAIN_SWEEP_TRIAL naming a real Optuna SQLite
study, the run reports its metric at each evaluation and stops, as an early stop does, where the pruner says.
The decision is known: the study's one completed trial reached val/acc1 100 at every step (n_startup_trials=1),
and this run's learning rate (1e-30) cannot move its weights, so the median pruner prunes it at its first
evaluation past the warm-up (n_warmup_steps=5: step 8, evaluations every 4 steps)."""
import csv
import io
import json

import optuna
from optuna.trial import TrialState

from common.compare.__main__ import compare
from common.formats.checkpoint import load_file
from support.inprocess import run_inprocess
from support.outputs import metrics

FROZEN = ("optim.lr=1e-30", "train.max_steps=16", "train.eval_every_steps=4", "train.log_every_steps=4",
          "train.ckpt_every_steps=4", "ckpt.keep_last=1", "data.synthetic_train=256", "data.synthetic_test=64")
PRUNER = {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 5}


def test_a_trial_pruned_by_its_pruner_stops_at_that_evaluation_and_a_rerun_says_complete(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=100.0, intermediate_values={s: 100.0 for s in range(17)},
                                              state=TrialState.COMPLETE))
    number = study.ask().number
    monkeypatch.setenv("DTRAIN_SWEEP_TRIAL", json.dumps({"storage": url, "study": "s", "trial": number,
                                                         "metric": "val/acc1", "pruner": PRUNER}))
    out = tmp_path / "run"
    proc = run_inprocess("mnist_mlp", f"out_dir={out}", *FROZEN)
    rows = metrics(out)
    acc = {r["step"]: r["acc1"] for r in rows if r["split"] == "val"}
    assert list(acc) == [4, 8]  # the warm-up's evaluation, then the pruned one
    reason = f"pruned by the sweep's pruner at step 8 (val/acc1 {acc[8]:.6g})"
    assert rows[-1]["split"] == "end" and (rows[-1]["status"], rows[-1]["step"], rows[-1]["reason"]) == \
        ("pruned", 8, reason)
    assert f"run mnist_mlp stopped at step 8 of 16, {reason}," in proc.stdout, proc.stdout
    trial = study.trials[number]
    assert trial.intermediate_values == acc and trial.state == TrialState.RUNNING  # the sweep tells its state
    sd = load_file(out / "checkpoints" / "step_00000008")
    assert sd["early_stop"]["stopped_step"] == 8 and sd["early_stop"]["pruned"] and sd["early_stop"]["reason"] == reason
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000004", "step_00000008"]  # + best
    # Relaunched (a sweep killed before it recorded PRUNED): complete, nothing trained, nothing reported.
    before = (out / "metrics.jsonl").read_bytes()
    again = run_inprocess("mnist_mlp", f"out_dir={out}", *FROZEN)
    assert f"run mnist_mlp is already complete: stopped at step 8: {reason}" in again.stdout, again.stdout
    assert (out / "metrics.jsonl").read_bytes() == before
    assert study.trials[number].intermediate_values == acc
    compare([str(out), "--to", str(tmp_path / "cmp")])  # a run dir alone, outside a sweep directory
    row, = csv.DictReader(io.StringIO((tmp_path / "cmp" / "compare.csv").read_text()))
    assert row["status"] == "pruned" and row["steps"] == "8"


def test_without_a_startup_trial_the_pruner_lets_the_run_finish(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    number = study.ask().number
    monkeypatch.setenv("DTRAIN_SWEEP_TRIAL", json.dumps({"storage": url, "study": "s", "trial": number,
                                                         "metric": "val/acc1", "pruner": PRUNER}))
    run_inprocess("mnist_mlp", f"out_dir={tmp_path / 'run'}", *FROZEN, "train.max_steps=8")
    end = metrics(tmp_path / "run")[-1]
    assert (end["split"], end["status"], end["step"]) == ("end", "finished", 8)
    assert sorted(study.trials[number].intermediate_values) == [4, 8]  # reported at every evaluation, even the last
