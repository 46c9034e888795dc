"""Early stopping and optim.schedule=plateau: a stop at a known evaluation (optim.lr=1e-30: the weights
cannot move in float32, so the metric never improves), the count continued on resume, a stopped run
complete on re-run (and its end row written by the re-run of a run killed before it), both ranks of a
torchrun stopping at the same step, the plateau LR falling by its factor after its patience, and a
plateau run resumed bitwise."""
import subprocess

from common.formats.checkpoint import load_file
from support.inprocess import run_inprocess
from support.outputs import final_weights, metrics, resume_dir_from
from support.runs import ROOT, recipe_command, run_recipe

FROZEN = ("optim.lr=1e-30", "train.max_steps=64", "train.eval_every_steps=4", "train.log_every_steps=4",
          "train.ckpt_every_steps=4", "ckpt.keep_last=1", "data.synthetic_train=256", "data.synthetic_test=64")
STOP = ("train.early_stop_metric=val/acc1", "train.early_stop_patience=2")


def ends(out):
    return [r for r in metrics(out) if r["split"] == "end"]


def test_a_run_that_stops_improving_stops_early_with_a_checkpoint_and_a_rerun_says_complete(tmp_path):
    # 8 steps: evaluations at 4 (the best) and 8 (no improvement), finished. Resumed for 64 steps, the count
    # continues: the evaluation at 12 is the second without improvement and stops the run there (a count
    # started over would take the best at 12 and stop at 20).
    first = run_inprocess("mnist_mlp", f"out_dir={tmp_path}", *FROZEN, *STOP, "train.max_steps=8")
    assert [(r["status"], r["step"], r["reason"]) for r in ends(tmp_path)] == [("finished", 8, "trained all 8 steps")]
    assert "finished: step 8 of 8" in first.stdout
    best = [r["acc1"] for r in metrics(tmp_path) if r["split"] == "val"][0]
    proc = run_inprocess("mnist_mlp", f"out_dir={tmp_path}", *FROZEN, *STOP)
    assert (f"early stopping on val/acc1: best {best:.6g}, 1 evaluation(s) without improvement; the run stops at "
            "train.early_stop_patience=2") in proc.stdout, proc.stdout
    reason = f"val/acc1 did not improve by more than 0 for 2 evaluations (train.early_stop_patience=2; best {best:.6g})"
    assert f"run mnist_mlp stopped early at step 12 of 64: {reason}" in proc.stdout, proc.stdout
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows if r["split"] == "val"] == [4, 8, 12]
    assert [r["split"] for r in rows].count("end") == 1  # the finished part's row went with the resume
    assert rows[-1]["split"] == "end" and rows[-1]["status"] == "stopped_early" and rows[-1]["step"] == 12
    assert rows[-1]["reason"] == reason and rows[-1]["epoch"] == 1  # 256 / 32 = 8 steps an epoch
    sd = load_file(tmp_path / "checkpoints" / "step_00000012")
    assert sd["early_stop"]["stopped_step"] == 12 and sd["early_stop"]["bad"] == 2
    assert (tmp_path / "checkpoints" / "best.json").read_text().startswith('{"name": "step_00000004"')
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert kept == ["step_00000004", "step_00000012"]  # the newest (ckpt.keep_last=1) and the best
    before = (tmp_path / "metrics.jsonl").read_bytes()
    again = run_inprocess("mnist_mlp", f"out_dir={tmp_path}", *FROZEN, *STOP, "train.early_stop_patience=5")
    assert again.returncode == 0
    assert f"run mnist_mlp is already complete: stopped early at step 12: {reason}" in again.stdout, again.stdout
    assert ("changed since the checkpoint, not applied, the run stopped early at step 12: "
            "train.early_stop_patience 2 -> 5") in again.stdout
    assert (tmp_path / "metrics.jsonl").read_bytes() == before  # nothing trained, nothing logged


def test_a_rerun_writes_the_end_row_its_killed_run_did_not(tmp_path):
    """Killed after its stop checkpoint, before its end row: the re-run finds the run complete and writes the row
    (a sweep reads how its trial ended from it: stopped, pruned or finished)."""
    cmd, env = recipe_command("mnist_mlp", f"out_dir={tmp_path}", *FROZEN, *STOP, fault="kill_at_end")
    killed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert killed.returncode == -9 and not ends(tmp_path), killed.stdout + killed.stderr
    assert metrics(tmp_path)[-1] == {**metrics(tmp_path)[-1], "split": "val", "step": 12}
    again = run_inprocess("mnist_mlp", f"out_dir={tmp_path}", *FROZEN, *STOP)
    assert "run mnist_mlp is already complete: stopped early at step 12: " in again.stdout, again.stdout
    (end,) = ends(tmp_path)
    assert end["step"] == 12 and end["status"] == "stopped_early" and end["reason"].startswith("val/acc1 did not "), end
    before = (tmp_path / "metrics.jsonl").read_bytes()
    run_inprocess("mnist_mlp", f"out_dir={tmp_path}", *FROZEN, *STOP)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before  # written once


def test_a_metric_the_recipe_does_not_log_is_refused_before_anything_starts(tmp_path):
    proc = run_inprocess("mnist_mlp", f"out_dir={tmp_path}", "train.early_stop_metric=val/fd", check=False)
    assert proc.returncode == 2
    assert proc.stderr == ("config error: train.early_stop_metric=val/fd: this recipe's evaluation does not log it; "
                           "the metrics it logs are val/acc1 (max), val/acc5 (max), val/loss (min): set "
                           "train.early_stop_metric to one of them\n")
    proc = run_inprocess("mnist_mlp", f"out_dir={tmp_path}", "optim.schedule=plateau", "ckpt.best_metric=none",
                         check=False)
    assert proc.returncode == 2 and "optim.schedule=plateau lowers the LR when an eval metric stalls" in proc.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_two_processes_stop_at_the_same_step(tmp_path):
    # Each rank decides on rank 0's broadcast value: a rank that went on would wait in DDP's all-reduce
    # for one that stopped, and the run would fail at dist_timeout_s instead of exiting 0.
    run_recipe("mnist_mlp", f"out_dir={tmp_path}", *FROZEN, *STOP, "dist_timeout_s=60", nproc=2)
    assert [(r["status"], r["step"]) for r in ends(tmp_path)] == [("stopped_early", 12)]
    sd = load_file(tmp_path / "checkpoints" / "step_00000012")
    assert sd["world_size"] == 2 and len(sd["rng"]) == 2 and sd["early_stop"]["stopped_step"] == 12


PLATEAU = ("optim.schedule=plateau", "optim.plateau_factor=0.5", "optim.plateau_patience=1")


def test_plateau_lowers_the_lr_by_its_factor_after_its_patience_down_to_its_floor(tmp_path):
    # ckpt.best_metric (val/acc1) never improves: evaluations at 4 (best), 8, 12 (the second without
    # improvement: x0.5), 16, 20 (x0.5 again, floored at optim.min_lr_ratio=0.3), 24, 28 (a third time). A
    # train row at an evaluation's step shows the LR before that evaluation.
    run_inprocess("mnist_mlp", f"out_dir={tmp_path}", *FROZEN, *PLATEAU, "optim.min_lr_ratio=0.3",
                  "train.max_steps=28")
    lr = {r["step"]: r["lr"] for r in metrics(tmp_path) if r["split"] == "train"}
    assert lr == {4: 1e-30, 8: 1e-30, 12: 1e-30, 16: 1e-30 * 0.5, 20: 1e-30 * 0.5, 24: 1e-30 * 0.3, 28: 1e-30 * 0.3}
    progress = load_file(tmp_path / "checkpoints" / "step_00000028")["scheds"]["net"]["progress"]
    best = [r["acc1"] for r in metrics(tmp_path) if r["split"] == "val"][0]
    assert progress == {"scale": 0.3, "best": best, "bad": 0, "reductions": 3}


def test_plateau_resume_is_bitwise_and_a_new_length_keeps_its_reductions(tmp_path):
    # Patience 0 on val/acc1: the LR halves at each evaluation that is not a new best (here 10, 12, 14 and 16:
    # acc1 reaches 100 at 8); resumed from step 12, between reductions.
    steps = (*PLATEAU, "optim.plateau_patience=0", "train.max_steps=16", "train.eval_every_steps=2",
             "train.ckpt_every_steps=6", "ckpt.keep_last=4", "train.log_every_steps=1")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_inprocess("mnist_mlp", f"out_dir={full}", *steps)
    lr = [r["lr"] for r in metrics(full) if r["split"] == "train"]
    reductions = load_file(full / "checkpoints" / "step_00000012")["scheds"]["net"]["progress"]["reductions"]
    assert reductions >= 1 and lr[-1] < 0.5 * lr[11]  # falls before the resumed step and after it
    resume_dir_from(full, 12, resumed)
    proc = run_inprocess("mnist_mlp", f"out_dir={resumed}", *steps)
    assert "resumed from" in proc.stdout and "not re-planned" not in proc.stdout
    assert final_weights(full).keys() == final_weights(resumed).keys()
    for k, v in final_weights(full).items():
        assert v.equal(final_weights(resumed)[k]), k
    after = lambda out: [(r["step"], r["lr"]) for r in metrics(out) if r["split"] == "train" and r["step"] > 12]  # noqa: E731
    assert after(resumed) == after(full)
    shorter = resume_dir_from(full, 12, tmp_path / "shorter")
    proc = run_inprocess("mnist_mlp", f"out_dir={shorter}", *steps, "train.max_steps=14")
    assert (f"optim.schedule=plateau is not re-planned for the new run length: the LR keeps the {reductions} "
            f"reduction(s) made so far (x{0.5 ** reductions:g} of optim.lr)") in proc.stdout, proc.stdout
    assert [r["lr"] for r in metrics(shorter) if r["split"] == "train" and r["step"] == 13] == [lr[12]]
