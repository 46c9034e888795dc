"""What a sweep prints at its end: the best trial (number, value, params, run dir) and one line per trial."""
from __future__ import annotations

from pathlib import Path

from optuna.trial import TrialState

from common.sweep.spec import Spec, arg
from common.sweep.study import run_dir


def _value(v) -> str:
    return "-" if v is None else f"{v:.6g}"


def _param(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else arg(v)  # trials.json keeps every digit


def summary(study, spec: Spec, sweep_dir: Path) -> str:
    trials = study.get_trials(deepcopy=False)
    keys = [p.key for p in spec.params]
    rows = [["trial", "state", spec.metric, *keys]]
    rows += [[str(t.number), t.state.name, _value(t.value), *(_param(t.params[k]) if k in t.params else "-" for k in keys)]
             for t in trials]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        head = f"no trial completed ({len(trials)} of {spec.n_trials}); the logs are in {sweep_dir / 'logs'}"
    else:
        best = study.best_trial
        head = (f"best trial {best.number}: {spec.metric} {_value(best.value)} ({spec.direction}) in "
                f"{sweep_dir / run_dir(best.number)}\n  params: "
                + " ".join(f"{k}={_param(v)}" for k, v in best.params.items()))
    return "\n".join([head, *table])
