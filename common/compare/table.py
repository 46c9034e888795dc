"""The comparison table, one row per run: the config keys that differ, status, steps, wall time,
throughput, the best ckpt.best_metric and its step, and the last evaluation's metrics.

CSV keeps every number as metrics.jsonl has it (wall time in seconds); markdown shows 4 significant
digits and `-` where a run has no value (no evaluation, a key its recipe lacks).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Callable

from common.compare.runs import Run, differing_keys, recipes_note


@dataclass
class Column:
    csv: str  # CSV header: a machine-readable name
    md: str  # markdown header
    values: list  # one per run; None = no value
    show: Callable = lambda v: _number(v)


def _number(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v if isinstance(v, str) and v else json.dumps(v)  # '' as ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _duration(s: float) -> str:
    """Seconds as H:MM:SS (one format down the column, so runs read side by side)."""
    m, sec = divmod(round(s), 60)
    return f"{m // 60}:{m % 60:02d}:{sec:02d}"


def columns(runs: list[Run]) -> list[Column]:
    cols = [Column("run", "run", [r.name for r in runs]), Column("path", "path", [str(r.path) for r in runs])]
    if recipes_note(runs):
        cols.append(Column("recipe", "recipe", [r.recipe for r in runs]))
    cols += [Column(k, k, [r.config.get(k) for r in runs]) for k in differing_keys(runs)]
    cols += [Column("status", "status", [r.status for r in runs]),
             Column("steps", "steps", [r.steps for r in runs]),
             Column("wall_time_s", "wall time", [r.wall_time_s for r in runs], _duration),
             Column("samples_per_s", "samples/s", [r.samples_per_s for r in runs])]
    if any(r.trial is not None for r in runs):
        cols.append(Column("trial_value", "trial value", [(r.trial or {}).get("value") for r in runs]))
    names = {r.best_metric for r in runs if r.best_metric}
    best = [r.best for r in runs]
    if len(names) == 1:
        (metric, mode), = names
        cols.append(Column(f"best {metric}", f"best {metric} ({mode})", [b and b[0] for b in best]))
    else:
        cols += [Column("best_metric", "best metric", [r.best_metric and " ".join(r.best_metric) for r in runs]),
                 Column("best", "best", [b and b[0] for b in best])]
    cols.append(Column("best_step", "at step", [b and b[1] for b in best]))
    finals = [r.final for r in runs]
    keys = list(dict.fromkeys(k for f in finals for k in f))
    cols += [Column(f"final {k}", f"final {k}", [f.get(k) for f in finals]) for k in keys]
    return cols


def markdown(runs: list[Run]) -> str:
    cols = [c for c in columns(runs) if c.csv != "path"]
    cells = [[("-" if v is None else c.show(v)).replace("|", "\\|") for v in c.values] for c in cols]
    lines = ["| " + " | ".join(c.md for c in cols) + " |",
             "|" + "|".join("---" if c.md in ("run", "status") or not _numeric(c) else "---:" for c in cols) + "|"]
    lines += ["| " + " | ".join(col[i] for col in cells) + " |" for i in range(len(runs))]
    note = recipes_note(runs)
    return "\n".join(lines) + (f"\n\n{note}" if note else "") + "\n"


def _numeric(c: Column) -> bool:
    return all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in c.values)


def csv_text(runs: list[Run]) -> str:
    cols = columns(runs)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([c.csv for c in cols])
    for i in range(len(runs)):
        w.writerow(["" if c.values[i] is None else c.values[i] if isinstance(c.values[i], (str, int, float))
                    else json.dumps(c.values[i]) for c in cols])
    return out.getvalue()
