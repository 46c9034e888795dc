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
import os
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


class ValRows:
    """(step, value) of the val rows holding the metric that a growing metrics.jsonl gained since the last call.
    The run replaces the file when it starts (fresh: removed; resumed: cut after the checkpoint's step), which
    gives it a new inode: it is then read from the start again."""

    def __init__(self, path: Path, metric: str):
        self.path, self.name, self.inode, self.offset = path, metric.split("/", 1)[1], None, 0

    def new(self) -> list[tuple[int, float]]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_ino, st.st_dev) != self.inode or st.st_size < self.offset:
                    self.inode, self.offset = (st.st_ino, st.st_dev), 0
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        data = data[:data.rfind(b"\n") + 1]  # whole lines only: the last one may be half written
        self.offset += len(data)
        out = []
        for line in data.splitlines():
            if b'"val"' not in line:  # cheap: most rows are train rows
                continue
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by a crash
                continue
            if row.get("split") == "val" and self.name in row:
                out.append((row["step"], float(row[self.name])))
        return out


@dataclass
class Running:
    trial: optuna.trial.Trial
    handle: object
    rows: ValRows
    reported: set[int] = field(default_factory=set)  # steps already reported (also by an earlier sweep)
    stopping: bool = False  # SIGTERM sent (by the pruner, or the sweep is stopping)
    pruned: bool = False  # the pruner said stop
    last: float | None = None  # the metric at the newest val row: the trial's value when it completes


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
        self.running[number] = Running(trial, handle, ValRows(out / "metrics.jsonl", self.spec.metric), reported)
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
        for step, value in r.rows.new():
            r.last = value
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
        log = self.dir / "logs" / f"{number}.log"
        if rc == 0 and r.last is not None:
            self.study.tell(r.trial, r.last)
            print(f"sweep: trial {number} complete: {self.spec.metric} {r.last:g}", flush=True)
        elif r.pruned:
            self.study.tell(r.trial, state=TrialState.PRUNED)
        elif r.stopping:
            # Stopped with the sweep (exit 75, or 1 from torchrun, which its own SIGTERM makes fail after the
            # workers checkpointed): stays RUNNING in the study, resumed by the next sweep process.
            pass
        elif rc == EXIT_PREEMPTED:  # preempted by someone else: it checkpointed, so it goes on from there
            print(f"sweep: trial {number} was preempted (exit code {rc}); it resumes from its checkpoint", flush=True)
            self.resume.append((r.trial._trial_id, r.reported))
        else:
            why = f"exit code {rc}" if rc else f"no val row with {self.spec.metric} in {r.rows.path}"
            self.study.tell(r.trial, state=TrialState.FAIL)
            print(f"sweep: trial {number} failed ({why}); its log: {log}", flush=True)
        self._write()

    def _write(self) -> None:
        studies.write_trials(self.study, self.dir, set(self.running))
