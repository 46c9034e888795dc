"""Early stopping, and the metric a plateau schedule follows: which eval metric, which way is better, and
the decision at each evaluation, the same on every rank.

watched() reads train.early_stop_metric and, under optim.schedule=plateau, the metric the schedule
follows (the early-stop metric when set, else ckpt.best_metric), each checked against the recipe's
Task.metrics ({"val/<name>": "max"|"min"}): one it does not declare is a ConfigError naming those it has.
Watch.evaluated() takes an evaluation's reduced metrics; rank 0's values are broadcast (one small
collective per evaluation), so every rank steps the plateau schedules alike and stops at the same step.
The patience count (TrainState.early_stop) is saved in every checkpoint and continues on resume.
In a sweep's trial (common/train/trial.py), rank 0 also reports the trial's metric and asks the pruner;
its decision travels in the same broadcast, and a pruned run stops like an early stop (pruned: True).
"""
from __future__ import annotations

from common import dist
from common.config import ConfigError, UserError
from common.train import trial as sweep_trial
from common.train.optim import Plateau, improved

OFF = ("", "none", "null")


def metric_name(value: str | None) -> str | None:
    """A metric setting's value, None when it is off (none, empty, or null in YAML)."""
    return None if value is None or value.strip().lower() in OFF else value.strip()


def direction(key: str, name: str, metrics: dict[str, str]) -> str:
    """"max" or "min": which way `name` is better, as the recipe declares it; else a ConfigError for `key`."""
    if name in metrics:
        return metrics[name]
    have = ", ".join(f"{k} ({v})" for k, v in sorted(metrics.items())) or "none (its Task declares no metrics)"
    raise ConfigError(f"{key}={name}: this recipe's evaluation does not log it; the metrics it logs are {have}: "
                      f"set {key} to one of them")


def watched(cfg, metrics: dict[str, str]) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """((early-stop metric, direction) or None, (plateau metric, direction) or None)."""
    early = metric_name(cfg.train.early_stop_metric)
    stop = (early, direction("train.early_stop_metric", early, metrics)) if early else None
    if cfg.optim.schedule != "plateau":
        return stop, None
    if stop:
        return stop, stop
    best = metric_name(cfg.ckpt.best_metric)
    if best is None:
        raise ConfigError("optim.schedule=plateau lowers the LR when an eval metric stalls, and none is set: set "
                          "train.early_stop_metric or ckpt.best_metric (e.g. val/loss)")
    return stop, (best, direction("ckpt.best_metric", best, metrics))


class Watch:
    """The loop's view of early stopping and the plateau schedules (see the module docstring)."""

    def __init__(self, cfg, state, metrics: dict[str, str], total: int):
        self.stop_on, self.plateau_on = watched(cfg, metrics)
        self.trial = sweep_trial.from_env()
        if self.trial:
            direction(sweep_trial.ENV, self.trial.metric, metrics)
        self.state, self.total = state, total
        self.patience, self.min_delta = cfg.train.early_stop_patience, cfg.train.early_stop_min_delta

    def begin(self) -> str | None:
        """After the resume (if any): the count this run continues, as a log line (None when early stopping
        is off or the run is fresh). Another metric than the checkpoint's starts the count over."""
        count = self.state.early_stop
        if not self.stop_on or self.stopped:
            return None
        before, fresh = count["metric"], self.state.step == 0
        if before != self.stop_on[0]:
            count.update(metric=self.stop_on[0], best=None, bad=0)
        if fresh:
            return None
        note = f" (the count starts over: it was on {before})" if before and before != count["metric"] else ""
        best = "none yet" if count["best"] is None else f"{count['best']:.6g}"
        return (f"early stopping on {count['metric']}{note}: best {best}, {count['bad']} evaluation(s) without "
                f"improvement; the run stops at train.early_stop_patience={self.patience}")

    @property
    def stopped(self) -> bool:
        return self.state.early_stop["stopped_step"] is not None

    def evaluated(self, metrics: dict) -> None:
        """The evaluation of the current step (every rank calls it): plateau schedules observe their metric,
        the early-stop count advances, and in a sweep's trial rank 0 asks the pruner. At `patience` evaluations
        without improvement, or when the pruner says so, the run is stopped (before its last step: at the
        last one it has finished anyway)."""
        followed = [w[0] for w in (self.stop_on, self.plateau_on) if w] + ([self.trial.metric] if self.trial else [])
        names = sorted(set(followed))
        if not names:
            return
        step = self.state.step
        values = {n: metrics.get(n.partition("/")[2]) for n in names}
        prune, failed = self._ask_pruner(step, values)
        values, logged, prune, failed = dist.broadcast_object((values, sorted(metrics), prune, failed))
        if failed:  # on every rank: rank 0 alone raising would leave the others waiting
            raise UserError(failed)
        for name, value in values.items():
            if not _number(value):
                raise UserError(f"{name} (train.early_stop_metric, ckpt.best_metric for optim.schedule=plateau, or the "
                                f"sweep's metric) is not in the evaluation at step {step}, which logged "
                                f"{', '.join(logged) or 'nothing'} (a GAN logs val/fd only with a judge: "
                                "eval.classifier); set the metric, or turn it off")
        if self.plateau_on:
            for sched in self.state.scheds.values():
                if isinstance(sched, Plateau):
                    sched.observe(float(values[self.plateau_on[0]]), self.plateau_on[1])
        c = self.state.early_stop
        if prune:
            c.update(stopped_step=step, pruned=True, reason=f"pruned by the sweep's pruner at step {step} "
                     f"({self.trial.metric} {values[self.trial.metric]:.6g})")
        if not self.stop_on:
            return
        name, mode = self.stop_on
        if improved(values[name], c["best"], mode, self.min_delta):
            c["best"], c["bad"] = float(values[name]), 0
        else:
            c["bad"] += 1
        if c["bad"] >= self.patience and step < self.total and not prune:
            best = "none" if c["best"] is None else f"{c['best']:.6g}"
            c["stopped_step"] = step
            c["reason"] = (f"{name} did not improve by more than {self.min_delta:g} for {c['bad']} evaluations "
                           f"(train.early_stop_patience={self.patience}; best {best})")

    def _ask_pruner(self, step: int, values: dict) -> tuple[bool, str]:
        """Rank 0 in a sweep's trial: (prune?, why the study could not be asked, or "")."""
        if self.trial is None or dist.rank() != 0 or not _number(values[self.trial.metric]):
            return False, ""
        try:
            return self.trial.report(step, values[self.trial.metric]) and step < self.total, ""
        except UserError as e:
            return False, str(e)
        except Exception as e:  # noqa: BLE001 -- the database's failure, named, on every rank
            return False, f"{sweep_trial.ENV}: the sweep's study {self.trial.url} failed: {type(e).__name__}: {e}"


def _number(value) -> bool:
    return isinstance(value, (int, float))
