"""What rank 0 shows while a run trains: the tqdm bar (`train.progress`, on a terminal only), one per
evaluation, and the log lines, formatted for people.

Every log line starts with `step N/TOTAL`, the elapsed time and the ETA, so a SLURM log without a bar
shows progress too. While a bar is shown, stdout and stderr go through a writer that clears the bars,
writes whole lines, and redraws them: a log line never has bar fragments in it. The ETA is the
remaining steps at the mean pace of this process's steps so far (evaluations and checkpoints
included: they recur). metrics.jsonl keeps every number at full precision; this module only
shapes the console.
"""
from __future__ import annotations

import io
import math
import sys
import time

from tqdm import tqdm

PERF = ("samples_per_s", "samples_per_s_per_device", "step_time_s", "data_wait_pct",
        "peak_rss_gib", "peak_alloc_gib", "peak_reserved_gib")  # system metrics, shown apart (TensorBoard: perf/)


def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def number(v) -> str:
    """4 significant digits (3 in exponent form, below 1e-3 or from 1e6): at most 8 characters when positive."""
    if not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.2e}" if v and (abs(v) < 1e-3 or abs(v) >= 1e6) else f"{v:.4g}"


def perf_text(m: dict) -> str:
    """The system metrics with units; the per-device rate only where it differs (several processes)."""
    parts = []
    if "samples_per_s" in m:
        per = m.get("samples_per_s_per_device", m["samples_per_s"])
        parts.append(f"{m['samples_per_s']:>8,.0f} img/s" + (f" ({per:,.0f}/device)" if per != m["samples_per_s"] else ""))
    if "step_time_s" in m:
        t = m["step_time_s"]
        parts.append(f"{t * 1000:>5.0f} ms/step" if t < 10 else f"{t:>5.1f} s/step")
    if "data_wait_pct" in m:
        parts.append(f"data wait {m['data_wait_pct']:>3.0f}%")
    if "peak_rss_gib" in m:
        parts.append(f"peak rss {m['peak_rss_gib']:.2f} GiB")
    if "peak_alloc_gib" in m:
        parts.append(f"peak mem {m['peak_alloc_gib']:.2f} GiB (reserved {m.get('peak_reserved_gib', 0):.2f})")
    return "  ".join(parts)


def line(split: str, step: int, total: int, epoch, metrics: dict, times: str = "") -> str:
    """`[train] step   40/1000 epoch 0.40 | 0:01:02 elapsed  ETA 0:24:50 | loss 2.301    ... | perf`.
    Fixed-width fields, so consecutive lines align."""
    width = len(str(total)) if total else 0
    where = f"{f'[{split}]':<7} step {step:>{width}}" + (f"/{total}" if total else "") + f" epoch {epoch}"
    shown = "  ".join(f"{k} {number(v):<8}" for k, v in metrics.items() if k not in PERF).rstrip()
    perf = perf_text(metrics)
    return " | ".join(p for p in (where, times, shown, perf) if p)


class _AroundBars(io.TextIOBase):
    """A stream that writes whole lines with the bars cleared, then redraws them."""

    def __init__(self, stream, bars: list):
        self.stream, self.bars, self.pending = stream, bars, ""

    def write(self, s: str) -> int:
        self.pending += s
        if "\n" in self.pending:
            done, self.pending = self.pending.rsplit("\n", 1)
            for b in self.bars:
                b.clear()
            self.stream.write(done + "\n")
            self.stream.flush()
            for b in self.bars:
                b.refresh()
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def close_out(self) -> None:
        if self.pending:
            self.stream.write(self.pending)
            self.pending = ""
        self.stream.flush()


class Progress:
    """Rank 0's bar and log lines; on other ranks, or with no terminal, no bar. Call update() after each
    optimizer step, close() at the end (in a finally)."""

    def __init__(self, shown: bool, total: int, state, steps_per_epoch: int):
        """state: the run's TrainState, read at each line for the epoch (whole epochs done + the
        fraction of the current one: 1.00 = the first epoch finished)."""
        self.total, self.start, self.t0 = total, state.step, time.perf_counter()
        self.state, self.epoch_steps = state, max(1, steps_per_epoch)
        self.epoch_width = len(f"{math.ceil(total / self.epoch_steps):.2f}")
        self.shown = shown and sys.stderr.isatty()
        self.bars: list = []
        self.streams = None
        if self.shown:
            self.bar = tqdm(total=total, initial=self.start, dynamic_ncols=True, leave=False, unit="step")
            self.bars.append(self.bar)
            self.streams = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = _AroundBars(sys.stdout, self.bars), _AroundBars(sys.stderr, self.bars)

    def update(self) -> None:
        if self.shown:
            self.bar.update(1)

    def times(self, step: int) -> str:
        elapsed = time.perf_counter() - self.t0
        done = step - self.start
        if done <= 0:
            return f"{clock(elapsed)} elapsed  ETA -:--:--"
        return f"{clock(elapsed)} elapsed  ETA {clock(elapsed / done * (self.total - step))}"

    def line(self, split: str, step: int, metrics: dict) -> str:
        epoch = self.state.epoch + self.state.batch_in_epoch / self.epoch_steps
        return line(split, step, self.total, f"{epoch:>{self.epoch_width}.2f}", metrics, self.times(step))

    def counted(self, loader, what: str = "eval"):
        """The loader, ticking a bar of its own per batch while a bar is shown (an evaluation's progress)."""
        return _Counted(loader, self, what) if self.shown else loader

    def close(self) -> None:
        """Restore stdout and stderr, remove the bar; a second call does nothing."""
        if self.streams is not None:
            for s in (sys.stdout, sys.stderr):
                if isinstance(s, _AroundBars):
                    s.close_out()
            sys.stdout, sys.stderr = self.streams
            self.streams = None
        if self.shown:
            self.bar.close()
            self.bars.clear()
            self.shown = False


class _Counted:
    """A loader whose iteration shows a bar below the training bar; every other attribute is the loader's."""

    def __init__(self, loader, progress: Progress, what: str):
        self.loader, self.progress, self.what = loader, progress, what

    def __getattr__(self, name):
        return getattr(self.loader, name)

    @property
    def __class__(self):  # isinstance(counted, FolderEvalLoader) holds, as for the loader itself
        return type(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        total = len(self.loader) if hasattr(self.loader, "__len__") else None
        bar = tqdm(total=total, desc=self.what, dynamic_ncols=True, leave=False, unit="batch",
                   file=self.progress.streams[1])
        self.progress.bars.append(bar)
        try:
            for batch in self.loader:
                yield batch
                bar.update(1)
        finally:
            self.progress.bars.remove(bar)
            bar.close()
