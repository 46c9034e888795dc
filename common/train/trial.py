"""A sweep trial's pruning hook inside the run: the run reports its metric to its Optuna trial and asks the pruner.

`python -m common.sweep` starts each trial with DTRAIN_SWEEP_TRIAL set to JSON: {"storage": "sqlite:////abs/
study.db", "study": name, "trial": number, "metric": "val/<name>", "pruner": {"name": ..., options}}.
from_env() reads it (None when unset); SweepTrial.report(step, value) runs on rank 0 at each evaluation:
it stores the value as the trial's intermediate value at that step (a step already stored, by a run
resumed from an earlier checkpoint, keeps its value) and returns the pruner's decision. The caller
(common/train/stopping.py) shares the decision with the other ranks. optuna is imported only here, when
the variable is set.
"""
from __future__ import annotations

import json
import os

from common.config import UserError

ENV = "DTRAIN_SWEEP_TRIAL"
PRUNERS = {"median": "MedianPruner", "asha": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner",
           "none": "NopPruner"}  # a sweep spec's pruner name -> its class in optuna.pruners
SQLITE_TIMEOUT_S = 60  # the sweep and its trials write one SQLite file at once: wait for the lock, never fail


def storage(url: str):
    """The study's RDB storage, shared by the sweep and its trials' runs."""
    import optuna  # lazily: a heavy optional dependency, needed only inside a sweep

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})


def pruner(options: dict):
    """The pruner a spec's {"name": ..., options} names (the sweep checked its options)."""
    import optuna  # lazily, as above

    options = dict(options)
    return getattr(optuna.pruners, PRUNERS[options.pop("name")])(**options)


def from_env() -> SweepTrial | None:
    raw = os.environ.get(ENV)
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        return SweepTrial(spec["storage"], spec["study"], int(spec["trial"]), spec["metric"], spec["pruner"])
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{ENV} is set but is not a sweep trial's JSON ({type(e).__name__}: {e}); it is set by "
                        f"python -m common.sweep: unset it to run on its own") from None


class SweepTrial:
    def __init__(self, url: str, study: str, number: int, metric: str, pruner_spec: dict):
        self.url, self.study_name, self.number, self.metric, self.pruner_spec = url, study, number, metric, pruner_spec
        self.trial, self.reported = None, set()

    def _open(self):
        import optuna  # lazily, as above

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        store = storage(self.url)
        study = optuna.load_study(study_name=self.study_name, storage=store, pruner=pruner(self.pruner_spec),
                                  sampler=optuna.samplers.RandomSampler())  # no sampling here: the cheapest one
        trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(self.study_name),
                                                               self.number)
        frozen = store.get_trial(trial_id)
        if frozen.state.is_finished():
            raise UserError(f"{ENV}: trial {self.number} of {self.url} is already {frozen.state.name}; unset "
                            f"{ENV} to train this run dir on its own")
        self.reported = set(frozen.intermediate_values)
        return optuna.trial.Trial(study, trial_id)

    def report(self, step: int, value: float) -> bool:
        """Rank 0 only: store `value` at `step` (once) and ask the pruner; True: prune the run."""
        if self.trial is None:
            self.trial = self._open()
        if step not in self.reported:  # Trial.report ignores a stored step anyway, with a warning
            self.trial.report(float(value), step)
            self.reported.add(step)
        return self.trial.should_prune()
