"""The comparison's pictures (PNG, matplotlib's Agg backend, imported when drawing).

curves.png: the train loss and the eval metric (a sweep's own, else the runs' ckpt.best_metric) against the step
and against wall time, one line per run on shared axes, one legend. sweep.png, when trials are
compared: the best metric of each trial against each swept key (log x axis for a key sampled on a log
scale; categories for a categorical key), pruned trials marked apart.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

from common.compare.runs import Run, differing_keys, swept_keys
from common.config import UserError

UNITS = {"acc1": "%", "acc5": "%", "label_acc": "%", "psnr": "dB"}
DPI = 110
LABEL_KEYS = 4


def _pyplot():
    try:
        import matplotlib  # lazily: only drawing needs it, and it is slow to import
    except ImportError:
        raise UserError("the pictures need matplotlib: pip install matplotlib (requirements.txt has it)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _with_unit(metric: str) -> str:
    unit = UNITS.get(metric.rpartition("/")[2])
    return f"{metric} ({unit})" if unit else metric


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def labels(runs: list[Run]) -> list[str]:
    """Each run's name and the values of the keys that differ (the swept keys for a sweep); the name
    alone where more than LABEL_KEYS keys differ (runs of different recipes: the table has them)."""
    keys = swept_keys(runs) or differing_keys(runs)
    if len(keys) > LABEL_KEYS:
        return [r.name for r in runs]
    return [r.name + ("  " + ", ".join(f"{k}={_short(r.config.get(k, '-'))}" for k in keys) if keys else "")
            for r in runs]


def colors(plt, n: int) -> list:
    """Distinct colours: tab10 up to 10 runs, tab20 up to 20, then evenly spaced on a colour map."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("turbo")(i / (n - 1)) for i in range(n)]


def eval_metric(runs: list[Run]) -> tuple[str, str] | None:
    """(metric, mode) the pictures show: a sweep's own (its spec.yaml's metric and direction), else the
    metric the runs pick their best checkpoint by (the commonest), else the first one evaluated."""
    named = Counter(r.best_metric for r in runs if r.best_metric and r.best)
    for sweep in dict.fromkeys(r.sweep for r in runs if r.sweep is not None):
        spec = _spec(sweep)
        metric = spec.get("metric") if isinstance(spec, dict) else None
        direction = str(spec.get("direction", "")).lower()[:3] if isinstance(spec, dict) else ""
        modes = [mode for name, mode in named if name == metric]  # without a direction: the runs' own for it
        if isinstance(metric, str) and (direction in ("max", "min") or modes):
            return metric, direction if direction in ("max", "min") else modes[0]
    if named:
        return named.most_common(1)[0][0]
    keys = [k for r in runs for k in r.final]
    return (keys[0], "max") if keys else None


def train_loss(run: Run) -> str | None:
    keys = [k for r in run.rows if r.get("split") == "train" for k in r if k.startswith("loss")]
    return "loss" if "loss" in keys else (keys[0] if keys else None)


def _time_scale(runs: list[Run]) -> tuple[float, str]:
    """Seconds per unit of the wall-time axis and its name: seconds, minutes or hours by the longest run."""
    longest = max((r.wall_time_s or 0.0) for r in runs)
    return (1.0, "s") if longest < 120 else (60.0, "min") if longest < 7200 else (3600.0, "h")


def curves(runs: list[Run], path: Path) -> Path:
    """runs: one or more, each with rows."""
    plt = _pyplot()
    from matplotlib.lines import Line2D  # with pyplot, lazily

    metric = (eval_metric(runs) or (None, ""))[0]
    scale, unit = _time_scale(runs)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), sharex="row", squeeze=False)
    loss_keys = {train_loss(r) for r in runs} - {None}
    loss_name = ("train/" + loss_keys.pop() if len(loss_keys) == 1
                 else f"train loss ({', '.join(sorted(loss_keys))})" if loss_keys else "train loss")
    handles = []
    for r, label, color in zip(runs, labels(runs), colors(plt, len(runs))):
        style = {"color": color, "linestyle": "--" if r.status == "pruned" else "-", "linewidth": 1.6}
        handles.append(Line2D([], [], label=label, **style))
        split, _, key = (metric or "/").partition("/")
        for col, points in ((0, r.numbers("train", train_loss(r) or "")), (1, r.numbers(split, key))):
            if not points:
                continue
            steps, times, values = zip(*points)
            elapsed = [(t - r.started) / scale for t in times] if r.started is not None else []
            for row, xs in ((0, steps), (1, elapsed)) if elapsed else ((0, steps),):
                axes[row][col].plot(xs, values, marker="o" if col else None, markersize=3, **style)
                if r.status == "pruned":  # where the pruner stopped it
                    axes[row][col].plot(xs[-1:], values[-1:], marker="x", markersize=9, color=color, linestyle="none")
    for row, xlabel in ((0, "optimizer step"), (1, f"wall time since the first logged step ({unit})")):
        for col, ylabel in ((0, loss_name), (1, _with_unit(metric or "eval metric"))):
            ax = axes[row][col]
            ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ylabel} against {xlabel.split(' (')[0]}")
            ax.grid(True, alpha=0.3)
            if _spans_decades(ax):
                ax.set_yscale("log")
                ax.set_ylabel(f"{ylabel} (log scale)")
    pruned = "  (dashed, x: pruned)" if any(r.status == "pruned" for r in runs) else ""
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False,
               title=f"{len(runs)} runs{pruned}", ncol=1 if len(runs) <= 24 else 2)
    fig.suptitle(f"{len(runs)} runs: train loss and {metric or 'eval metric'}", fontsize="x-large")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _spans_decades(ax) -> bool:
    """A panel whose values are all positive and span over two decades (a diverged run beside good
    ones) reads better on a log axis."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    return bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 100


def log_scaled(key: str, values: list, sweeps: set[Path]) -> bool:
    """Whether a swept key goes on a log axis: its entry in a spec.yaml says so (`log: true`, or a
    distribution named log-something), or, without one, positive numbers spanning a decade or more."""
    for sweep in sweeps:
        entry = _find(_spec(sweep), key)
        if isinstance(entry, dict):
            return entry.get("log") is True or any(isinstance(v, str) and "log" in v.lower() for v in entry.values())
        if isinstance(entry, str):
            return "log" in entry.lower()
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(nums) == len(values) > 1 and min(nums) > 0 and max(nums) / min(nums) >= 10


def _spec(sweep: Path):
    try:
        return yaml.safe_load((sweep / "spec.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None


def _find(tree, key: str):
    """The value under `key` anywhere in a parsed spec, None when it has none."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        found = (_find(v, key) for v in tree.values())
    elif isinstance(tree, list):
        found = (_find(v, key) for v in tree)
    else:
        return None
    return next((f for f in found if f is not None), None)


def sweep(runs: list[Run], path: Path) -> Path | None:
    """The best metric of each trial against each swept key; None when no trial has a metric yet."""
    keys, (metric, mode) = swept_keys(runs), eval_metric(runs) or (None, "")
    trials = [r for r in runs if r.trial is not None and metric and r.best_of(metric, mode) is not None]
    if not keys or not trials:
        return None
    plt = _pyplot()
    sweeps = {r.sweep for r in trials}
    fig, axes = plt.subplots(1, len(keys), figsize=(max(6.0, 4.6 * len(keys)), 4.6), sharey=True, squeeze=False)
    kinds = {"pruned": ("x", "tab:red", 70), "finished": ("o", "tab:blue", 45), "stopped early": ("s", "tab:green", 45)}
    for ax, key in zip(axes[0], keys):
        values = [r.config.get(key) for r in trials]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        cats = [] if numeric else list(dict.fromkeys(_short(v) for v in values))
        xs = values if numeric else [cats.index(_short(v)) for v in values]
        for status in dict.fromkeys(r.status for r in trials):
            marker, color, size = kinds.get(status, ("^", "tab:gray", 45))
            pts = [(x, r.best_of(metric, mode)[0]) for x, r in zip(xs, trials) if r.status == status]
            ax.scatter(*zip(*pts), marker=marker, color=color, s=size, label=status, zorder=3)
        if numeric and log_scaled(key, values, sweeps):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(cats)), cats)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        ax.set(xlabel=key + (" (log scale)" if ax.get_xscale() == "log" else ""), title=f"{metric} against {key}")
        ax.grid(True, alpha=0.3)
    ys = [r.best_of(metric, mode)[0] for r in trials]
    wide = min(ys) > 0 and max(ys) / min(ys) > 100  # a diverged trial beside good ones
    if wide:
        axes[0][0].set_yscale("log")
    axes[0][0].set_ylabel(f"best {_with_unit(metric)} ({mode})" + (" (log scale)" if wide else ""))
    handles, texts = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, texts, loc="center left", bbox_to_anchor=(1.0, 0.5), title="trial status", frameon=False)
    fig.suptitle(f"{len(trials)} trials: best {metric} of each against the swept keys", fontsize="large")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path

