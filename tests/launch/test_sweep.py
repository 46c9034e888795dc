"""python -m common.sweep for real: the spec of docs/sweeps.md as written, its sweep SIGKILLed (with its running
trials) once two trials are complete and one has a checkpoint, then re-run to the end; and a sweep whose trials
are sbatch jobs on the real single-node SLURM cluster (tests/launch/conftest.py). In both, trial 2 prunes itself:
its run reports to the study and stops where the pruner says (common/train/trial.py), so the outcome does not
depend on when the sweep looks."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from support.inprocess import run_inprocess
from support.launchutil import slurm_env
from support.outputs import metrics
from support.runs import ROOT

DOC = (ROOT / "docs" / "sweeps.md").read_text()
SPEC = re.search(r"^```yaml\n(.*?)^```", DOC, re.S | re.M).group(1)  # the page's spec
COMMAND = "python -m common.sweep sweep.yaml --local 2 --dir runs/sweep_lr"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
LIMIT_S = 900  # a bound for a sweep that hangs, not a timing


def trials(sweep_dir: Path) -> list[dict]:
    try:
        return json.loads((sweep_dir / "trials.json").read_text())
    except FileNotFoundError:
        return []


def launches(sweep_dir: Path, number: int) -> int:
    return (sweep_dir / "logs" / f"{number}.log").read_text().count(f"dtrain sweep: trial {number}: ")


def pruned_itself(run: Path, log: str, max_steps: int) -> None:
    """The run stopped at its pruned evaluation, before its last step, and said so: in its summary, or, relaunched
    because the sweep was killed before it recorded PRUNED, in the line saying it is already complete."""
    end = metrics(run)[-1]
    assert end["split"] == "end" and end["status"] == "pruned" and end["step"] < max_steps, end
    assert end["reason"].startswith(f"pruned by the sweep's pruner at step {end['step']} (val/acc1 "), end
    said = re.findall(rf"run mnist_mlp (?:stopped at step {end['step']} of {max_steps}, |is already complete: stopped at "
                      rf"step {end['step']}: ){re.escape(end['reason'])}", log)
    assert said, log


def checkpointed(sweep_dir: Path, row: dict) -> bool:
    return row["state"] == "RUNNING" and any((sweep_dir / row["run_dir"] / "checkpoints").glob("step_*/state.pt"))


def kill_with_trials(proc: subprocess.Popen) -> None:
    """SIGKILL the sweep and its trials' process groups, as a lost machine would; the sweep is stopped first so
    it sees nothing of it."""
    os.kill(proc.pid, signal.SIGSTOP)
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == proc.pid]
    for pid in children:
        os.killpg(pid, signal.SIGKILL)  # each trial leads its own process group
    proc.kill()
    proc.wait()


def _ppid(p: Path) -> int | None:
    try:
        return int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return None


@pytest.mark.slow
def test_the_documented_sweep_prunes_survives_sigkill_and_resumes_to_the_end(tmp_path):
    assert COMMAND in DOC
    (tmp_path / "sweep.yaml").write_text(SPEC)
    sweep_dir = tmp_path / "sweep_lr"
    cmd = [sys.executable, "-m", "common.sweep", str(tmp_path / "sweep.yaml"), "--local", "2", "--dir", str(sweep_dir)]
    first = subprocess.Popen(cmd, stdout=open(tmp_path / "first.out", "w"), stderr=subprocess.STDOUT, cwd=ROOT, env=ENV)
    deadline = time.time() + LIMIT_S
    while True:
        rows = trials(sweep_dir)
        if sum(r["state"] == "COMPLETE" for r in rows) >= 2 and any(checkpointed(sweep_dir, r) for r in rows):
            break
        assert first.poll() is None, f"the sweep ended before it was killed:\n{(tmp_path / 'first.out').read_text()}"
        assert time.time() < deadline, (tmp_path / "first.out").read_text()
        time.sleep(0.1)
    kill_with_trials(first)
    before = {r["number"]: r for r in trials(sweep_dir)}
    interrupted = [n for n, r in before.items() if checkpointed(sweep_dir, r)]
    finished = {n: r for n, r in before.items() if r["state"] in ("COMPLETE", "PRUNED")}

    second = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=LIMIT_S)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    after = trials(sweep_dir)
    assert [r["number"] for r in after] == list(range(6))
    assert {r["state"] for r in after} <= {"COMPLETE", "PRUNED"}, after
    spec = yaml.safe_load(SPEC)
    # Trial 2 draws optim.lr 3.3e-05 (the spec's seed): far below the two before it, and pruned at its first report
    # (trial 0 is complete by then: trial 2 takes its slot).
    assert after[2]["params"]["optim.lr"] < 1e-4 and after[2]["state"] == "PRUNED", after
    pruned_itself(sweep_dir / "trials" / "2", (sweep_dir / "logs" / "2.log").read_text(),
                  spec["overrides"]["train.max_steps"])
    for n, r in finished.items():  # complete and pruned trials are neither rerun nor changed
        assert after[n] == r and launches(sweep_dir, n) == 1
    for n in interrupted:  # the same trial, run dir and params, continued from its checkpoint
        log = (sweep_dir / "logs" / f"{n}.log").read_text()
        assert launches(sweep_dir, n) == 2 and f"resumed from {sweep_dir}/trials/{n}/checkpoints/step_" in log, log
        assert after[n]["params"] == before[n]["params"]
    for r in after:  # every trial a run of its own params, with its metric logged
        run = sweep_dir / r["run_dir"]
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["optim"]["lr"] == r["params"]["optim.lr"] and config["optim"]["name"] == r["params"]["optim.name"]
        vals = [m["acc1"] for m in metrics(run) if m["split"] == "val"]
        assert vals and (r["state"] == "PRUNED" or r["value"] == vals[-1])
    best = max((r for r in after if r["state"] == "COMPLETE"), key=lambda r: r["value"])
    assert f"best trial {best['number']}: val/acc1 {best['value']:g} (maximize) in {sweep_dir}/trials/{best['number']}" \
        in second.stdout
    assert len([line for line in second.stdout.splitlines() if re.match(r"\d+ +(COMPLETE|PRUNED) ", line)]) == 6
    assert yaml.safe_load((sweep_dir / "spec.yaml").read_text()) == spec and (sweep_dir / "study.db").is_file()
    evaluated = run_inprocess("mnist_mlp", "--evaluate", str(sweep_dir / best["run_dir"]), config=None)
    assert evaluated.returncode == 0 and "acc1" in evaluated.stdout


@pytest.mark.slow
@pytest.mark.usefixtures("slurm_cluster")
def test_a_sweep_of_sbatch_jobs_prunes_inside_the_jobs(tmp_path):
    """Three trials of the documented spec as sbatch jobs of slurm/single_node.sbatch, two in the queue at once:
    trial 2 (the tiny learning rate) is submitted once trial 0 or 1 is complete, and its job, which got the trial
    through sbatch's environment, prunes itself at its first evaluation and exits 0."""
    spec = yaml.safe_load(SPEC)
    spec.update(n_trials=3, slurm={"options": ["--nodes=1", "--cpus-per-task=1", "--time=10"]})
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "common.sweep", str(tmp_path / "sweep.yaml"), "--slurm", "2",
                           "--dir", str(sweep_dir)], capture_output=True, text=True, cwd=ROOT, timeout=LIMIT_S,
                          env=slurm_env())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = trials(sweep_dir)
    assert [r["state"] for r in rows][2] == "PRUNED" and rows[0]["state"] == "COMPLETE", rows
    for r in rows:
        log = (sweep_dir / "logs" / f"{r['number']}.log").read_text()
        assert "dtrain: job " in log and f"out_dir={sweep_dir}/trials/{r['number']}" in log, log  # a job of the template
    pruned_itself(sweep_dir / "trials" / "2", (sweep_dir / "logs" / "2.log").read_text(),
                  spec["overrides"]["train.max_steps"])


@pytest.mark.heavy
def test_two_process_trials_prune_on_both_ranks_under_asha(tmp_path):
    """nproc_per_node: 2 (each trial a torchrun of 2 processes) with the asha pruner, one trial at a time so the
    rungs fill in trial order: trial 2 (the tiny learning rate) is below the best at the first rung (step 8) and
    both its ranks stop there, exit 0, with the pruned end row."""
    spec = yaml.safe_load(SPEC)
    spec.update(n_trials=3, nproc_per_node=2, pruner={"name": "asha", "min_resource": 8, "reduction_factor": 3})
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "common.sweep", str(tmp_path / "sweep.yaml"), "--local", "1",
                           "--dir", str(sweep_dir)], capture_output=True, text=True, cwd=ROOT, timeout=LIMIT_S, env=ENV)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = trials(sweep_dir)
    assert [r["state"] for r in rows][2] == "PRUNED" and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}, rows
    for r in rows:
        log = (sweep_dir / "logs" / f"{r['number']}.log").read_text()
        assert "torch.distributed.run --standalone --nproc_per_node=2 " in log, log[:2000]
        run = sweep_dir / r["run_dir"]
        last = max((run / "checkpoints").glob("step_*"))
        assert torch.load(last / "state.pt", map_location="cpu", weights_only=True)["world_size"] == 2
    pruned_itself(sweep_dir / "trials" / "2", (sweep_dir / "logs" / "2.log").read_text(),
                  spec["overrides"]["train.max_steps"])
    assert metrics(sweep_dir / "trials" / "2")[-1]["step"] == 8


README_RUNS = re.search(r"\n## Many runs\n.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)


def test_the_readme_sweep_spec_is_valid(monkeypatch):
    """The spec the README's sweep command names loads and its sampler and pruner build (the sweep itself: heavy)."""
    from common.sweep import spec as specs, study
    path = shlex.split(README_RUNS.splitlines()[0], comments=True)[3]
    monkeypatch.chdir(ROOT)  # its config path is relative to the working directory, as the README runs it
    spec = specs.load(path)
    study.check(spec)
    assert spec.metric == "val/acc1" and spec.n_trials == 8 and spec.pruner["name"] == "median"
    assert f"python -m common.sweep {path} --local 2 --dir runs/sweep_mnist_cnn" in spec.path.read_text()


@pytest.mark.heavy
def test_the_readme_sweep_and_comparison_run_as_written(tmp_path):
    """The README's Many runs commands, in order, from a fresh directory: 8 real Fashion-MNIST trials, then the
    comparison whose sweep.png the README shows."""
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    for line in README_RUNS.splitlines():
        args = shlex.split(line, comments=True)
        assert args[:2] == ["python", "-m"], line
        proc = subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env={**ENV, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=LIMIT_S)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    rows = trials(tmp_path / "runs" / "sweep_mnist_cnn")
    assert len(rows) == 8 and {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}, rows
    assert max(r["value"] for r in rows if r["state"] == "COMPLETE") > 80  # real Fashion-MNIST, 400 steps
    png = tmp_path / "docs" / "sweep_mnist_cnn" / "sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
