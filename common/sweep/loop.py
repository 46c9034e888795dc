"""The study loop: keep up to `slots` trials running until the study holds n_trials finished trials.

Each trial is launched with DTRAIN_SWEEP_TRIAL (common/train/trial.py): the run itself reports its metric
to its trial at each evaluation and stops when the pruner says so, writing the end row status "pruned".
The sweep only launches, waits and records: on the trial's exit it reads the run's metrics.jsonl; an end
row "pruned" is PRUNED, another exit 0 is COMPLETE with the metric of its last evaluation, any other exit
is FAIL. Trials a killed sweep left RUNNING are resumed first: same number, params and run dir, where the
run's resume=auto continues from its newest checkpoint (a run that had already pruned itself says it is
complete and exits 0 at once). SIGINT/SIGTERM to the sweep stop its trials (they checkpoint) and leave
them to be resumed by the next sweep with this --dir.
"""
from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from common.sweep import study as studies
from common.sweep.spec import Spec, arg
from common.train import trial as sweep_trial
from common.train.log import read_metrics
from common.train.preempt import EXIT_INTERRUPTED, EXIT_PREEMPTED

JOB = "slurm_job"  # a trial's user attribute: its SLURM job id, found again by a re-run sweep


def ended(out: Path, metric: str) -> tuple[dict, float | None]:
    """A run dir's (end row, {} if none; the metric at its last val row or None)."""
    end, value, name = {}, None, metric.partition("/")[2]
    for row in read_metrics(out):
        if row.get("split") == "end":
            end = row
        elif row.get("split") == "val" and isinstance(row.get(name), (int, float)):
            value = float(row[name])
    return end, value


@dataclass
class Running:
    trial: optuna.trial.Trial
    handle: object
    out: Path  # the run dir
    stopping: bool = False  # SIGTERM sent: the sweep is stopping


class Sweep:
    def __init__(self, spec: Spec, sweep_dir: Path, launcher, slots: int):
        self.spec, self.dir, self.launcher, self.slots = spec, sweep_dir, launcher, slots
        self.study = studies.open_study(spec, sweep_dir)
        self.running: dict[int, Running] = {}
        self.created = len(self.study.trials)  # counted here: asking the database on every poll costs CPU
        self.signal: int | None = None
        # Trials to run again where they stopped: those a killed sweep left RUNNING, and preempted ones.
        self.resume = [t._trial_id for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]

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
                trial = optuna.trial.Trial(self.study, self.resume.pop(0))
                print(f"sweep: trial {trial.number} resumes in {self.dir / studies.run_dir(trial.number)}", flush=True)
            else:
                trial = studies.ask(self.study, self.spec, self.created)
                self.created += 1
            self._start(trial)

    def _start(self, trial) -> None:
        number, params = trial.number, trial.params
        out = self.dir / studies.run_dir(number)
        args = self.spec.base_args() + [f"{k}={arg(v)}" for k, v in params.items()] + [f"out_dir={out}"]
        env = {sweep_trial.ENV: json.dumps({"storage": studies.url(self.dir), "study": studies.STUDY, "trial": number,
                                            "metric": self.spec.metric, "pruner": self.spec.pruner})}
        handle = self.launcher.start(self.dir, number, args, env, job=trial.user_attrs.get(JOB))
        if getattr(handle, "job", None):
            trial.set_user_attr(JOB, handle.job)
        self.running[number] = Running(trial, handle, out)
        print(f"sweep: trial {number} started: {' '.join(f'{k}={arg(v)}' for k, v in params.items())}", flush=True)
        self._write()

    def _poll(self) -> None:
        for number, r in list(self.running.items()):
            if self.signal is not None and not r.stopping:
                r.handle.stop()
                r.stopping = True
            rc = r.handle.poll()
            if rc is not None:
                del self.running[number]
                self._finish(r, rc)

    def _finish(self, r: Running, rc: int) -> None:
        number = r.trial.number
        log = self.dir / "logs" / f"{number}.log"
        end, value = ended(r.out, self.spec.metric)
        if rc == 0 and end.get("status") == "pruned":
            self.study.tell(r.trial, state=TrialState.PRUNED)
            print(f"sweep: trial {number} {end.get('reason')}", flush=True)
        elif rc == 0 and value is not None:
            self.study.tell(r.trial, value)
            print(f"sweep: trial {number} complete: {self.spec.metric} {value:g}", flush=True)
        elif r.stopping:
            # Stopped with the sweep (exit 75, or 1 from torchrun, which its own SIGTERM makes fail after the
            # workers checkpointed): stays RUNNING in the study, resumed by the next sweep process.
            pass
        elif rc == EXIT_PREEMPTED:  # preempted by someone else: it checkpointed, so it goes on from there
            print(f"sweep: trial {number} was preempted (exit code {rc}); it resumes from its checkpoint", flush=True)
            self.resume.append(r.trial._trial_id)
        else:
            why = f"exit code {rc}" if rc else f"no val row with {self.spec.metric} in {r.out / 'metrics.jsonl'}"
            self.study.tell(r.trial, state=TrialState.FAIL)
            print(f"sweep: trial {number} failed ({why}); its log: {log}", flush=True)
        self._write()

    def _write(self) -> None:
        studies.write_trials(self.study, self.dir, set(self.running))
