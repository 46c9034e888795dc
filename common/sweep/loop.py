"""The study loop: keep up to `slots` trials running until the study holds n_trials finished trials.

Each running trial's metrics.jsonl is read as it grows; every val row with the metric is reported to
Optuna at its step, and when the pruner says so the run is stopped (SIGTERM: it checkpoints and exits)
and the trial is PRUNED. A run that exits 0 is COMPLETE with the metric of its last evaluation; any
other exit is FAIL. Trials a killed sweep left RUNNING are resumed first: same number, params and run
dir, where the run's resume=auto continues from its newest checkpoint. SIGINT/SIGTERM to the sweep stop
its trials the same way and leave them to be resumed by the next sweep with this --dir.
"""
from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from common.sweep import study as studies
from common.sweep.spec import Spec, arg
from common.train.preempt import EXIT_INTERRUPTED, EXIT_PREEMPTED

JOB = "slurm_job"  # a trial's user attribute: its SLURM job id, found again by a re-run sweep


@dataclass
class Running:
    trial: optuna.trial.Trial
    handle: object
    metrics: Path
    reported: set[int] = field(default_factory=set)  # steps already reported (also by an earlier sweep)
    stopping: bool = False  # SIGTERM sent (by the pruner, or the sweep is stopping)
    pruned: bool = False  # the pruner said stop


def val_rows(path: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every complete val row that holds the metric."""
    name = metric.split("/", 1)[1]
    try:
        lines = path.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return []
    rows = [json.loads(line) for line in lines if line.endswith("\n") and line.strip()]
    return [(r["step"], float(r[name])) for r in rows if r.get("split") == "val" and name in r]


class Sweep:
    def __init__(self, spec: Spec, sweep_dir: Path, launcher, slots: int):
        self.spec, self.dir, self.launcher, self.slots = spec, sweep_dir, launcher, slots
        self.study = studies.open_study(spec, sweep_dir)
        self.running: dict[int, Running] = {}
        self.created = len(self.study.trials)  # counted here: asking the database on every poll costs CPU
        self.signal: int | None = None
        # Trials to run again where they stopped: those a killed sweep left RUNNING, and preempted ones.
        self.resume = [(t._trial_id, set(t.intermediate_values))
                       for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]

    def _on_signal(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt  # asked twice: stop now, trials keep running to their checkpoints
        self.signal = signum
        print(f"sweep: {signal.Signals(signum).name}: stopping the running trials (they checkpoint; re-run "
              "the same command to resume)", flush=True)

    def run(self) -> int:
        """Run the study to n_trials; returns the exit code."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                if self.signal is None:
                    self._fill()
                if not self.running:
                    break
                self._poll()
                time.sleep(min((r.handle.POLL_S for r in self.running.values()), default=0))
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if self.signal is not None:
            return EXIT_INTERRUPTED if self.signal == signal.SIGINT else EXIT_PREEMPTED
        return 0

    def _fill(self) -> None:
        while len(self.running) < self.slots and (self.resume or self.created < self.spec.n_trials):
            if self.resume:
                trial_id, reported = self.resume.pop(0)
                trial = optuna.trial.Trial(self.study, trial_id)
                print(f"sweep: trial {trial.number} resumes in {self.dir / studies.run_dir(trial.number)}", flush=True)
            else:
                trial, reported = studies.ask(self.study, self.spec, self.created), set()
                self.created += 1
            self._start(trial, reported)

    def _start(self, trial, reported: set[int]) -> None:
        number, params = trial.number, trial.params
        out = self.dir / studies.run_dir(number)
        args = self.spec.base_args() + [f"{k}={arg(v)}" for k, v in params.items()] + [f"out_dir={out}"]
        handle = self.launcher.start(self.dir, number, args, job=trial.user_attrs.get(JOB))
        if getattr(handle, "job", None):
            trial.set_user_attr(JOB, handle.job)
        self.running[number] = Running(trial, handle, out / "metrics.jsonl", reported)
        print(f"sweep: trial {number} started: {' '.join(f'{k}={arg(v)}' for k, v in params.items())}", flush=True)
        self._write()

    def _poll(self) -> None:
        for number, r in list(self.running.items()):
            if self.signal is not None and not r.stopping:
                r.handle.stop()
                r.stopping = True
            rc = r.handle.poll()  # before reading the metrics: a run that has exited has written them all
            self._report(r)
            if rc is not None:
                del self.running[number]
                self._finish(r, rc)

    def _report(self, r: Running) -> None:
        for step, value in val_rows(r.metrics, self.spec.metric):
            if step in r.reported:
                continue
            r.trial.report(value, step)
            r.reported.add(step)
            if not r.stopping and self.signal is None and r.trial.should_prune():
                print(f"sweep: trial {r.trial.number} pruned at step {step} ({self.spec.metric} {value:g})", flush=True)
                r.handle.stop()
                r.stopping = r.pruned = True

    def _finish(self, r: Running, rc: int) -> None:
        number = r.trial.number
        rows = val_rows(r.metrics, self.spec.metric)
        log = self.dir / "logs" / f"{number}.log"
        if rc == 0 and rows:
            self.study.tell(r.trial, rows[-1][1])
            print(f"sweep: trial {number} complete: {self.spec.metric} {rows[-1][1]:g}", flush=True)
        elif r.pruned:
            self.study.tell(r.trial, state=TrialState.PRUNED)
        elif self.signal is not None and rc in (EXIT_PREEMPTED, EXIT_INTERRUPTED):
            pass  # stopped with the sweep: stays RUNNING in the study, resumed by the next sweep process
        elif rc == EXIT_PREEMPTED:  # preempted by someone else: it checkpointed, so it goes on from there
            print(f"sweep: trial {number} was preempted (exit code {rc}); it resumes from its checkpoint", flush=True)
            self.resume.append((r.trial._trial_id, r.reported))
        else:
            why = f"exit code {rc}" if rc else f"no val row with {self.spec.metric} in {r.metrics}"
            self.study.tell(r.trial, state=TrialState.FAIL)
            print(f"sweep: trial {number} failed ({why}); its log: {log}", flush=True)
        self._write()

    def _write(self) -> None:
        studies.write_trials(self.study, self.dir, set(self.running))
