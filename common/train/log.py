"""Rank-0 logging: metrics.jsonl, console lines, image grids, and the trackers of `log.backends`
(TensorBoard by default, W&B, MLflow: common/train/trackers.py).

Other ranks get a logger whose methods do nothing, so callers never branch on rank.
Only already-reduced numbers arrive here. On resume, events after the resumed step
are dropped from both metrics.jsonl and TensorBoard (purge_step), so curves continue
without overlap, and so are the rows of how the run ended before (split "end": end()).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import torch
from pathlib import Path

from common.config import LogConfig, UserError, flatten, to_dict
from common.formats.writes import write_failure, writes_agreed
from common.train.progress import PERF, line
from common.train.report import count_parameters
from common.train.trackers import check_installed, open_trackers


END = "end"  # the split of the row that says how the run ended (Logger.end)


def _hparams(config: dict) -> dict:
    """The config as trackers take hyperparameters: dotted keys, each value a scalar (lists as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()}


def write_end(out_dir: Path, is_main: bool, step: int, epoch: int, status: str, reason: str) -> None:
    """The end row (Logger.end) appended to out_dir/metrics.jsonl by rank 0. Collective: rank 0's write
    failure stops every rank."""
    with writes_agreed(f"log the end of the run at step {step} in {out_dir}", out_dir, Path(out_dir) / "checkpoints"):
        if is_main:
            with open(Path(out_dir) / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"split": END, "step": step, "epoch": epoch, "wall_time": time.time(),
                                    "status": status, "reason": reason}) + "\n")


def read_metrics(out_dir: Path) -> list[dict]:
    """The records of out_dir/metrics.jsonl; a line cut by a crash mid-write is skipped."""
    f = Path(out_dir) / "metrics.jsonl"
    rows = []
    for line in (f.read_text().splitlines() if f.exists() else []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


@dataclass
class Grid:
    """Images an evaluation returns to be shown as one grid: [N, C, H, W] in [-1, 1]."""
    images: torch.Tensor
    nrow: int = 8


class Logger:
    """Writes happen on rank 0; a failed write (disk full, read-only, quota) stops every rank with the
    same CheckpointError at the end of the call, which every rank makes (see `_writes`)."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0, cfg=None):
        """cfg: the run's config (log.backends, hyperparameters); None = TensorBoard, no hyperparameters.
        Collective: every rank raises the same error if rank 0 cannot open a tracker."""
        self.progress = None  # fit() sets the run's Progress (step N/TOTAL, times, ETA); None: the step alone
        log_cfg = cfg.log if cfg is not None else LogConfig()
        check_installed(log_cfg.backends)
        self.enabled, self.trackers, self.out_dir = enabled, [], Path(out_dir)
        self.config = _hparams(to_dict(cfg)) if cfg is not None else {}
        with self._writes("open the logs"):
            self._open(resume_step, log_cfg)

    def _open(self, resume_step: int, log_cfg) -> None:
        """Rank 0: metrics.jsonl continued (or started) and the trackers opened; a tracker that fails
        for another reason than a write error is a UserError naming it (raised on every rank by _writes)."""
        if not self.enabled:
            return
        self.jsonl = self.out_dir / "metrics.jsonl"
        if resume_step > 0 and self.jsonl.exists():
            self._truncate_after(resume_step)
        elif resume_step == 0 and self.jsonl.exists():
            self.jsonl.unlink()  # a fresh run owns the directory's history
        try:
            self.trackers = open_trackers(log_cfg, self.out_dir, resume_step, self.config)
        except Exception as e:  # noqa: BLE001 -- any library's failure, named, on every rank
            if isinstance(e, (OSError, RuntimeError)) and write_failure(e, self.out_dir):
                raise  # a full or read-only disk: _writes says so on every rank
            raise UserError(f"log.backends={list(log_cfg.backends)}: a tracker failed to start: "
                            f"{type(e).__name__}: {e}") from None

    def _truncate_after(self, step: int) -> None:
        keep = [r for r in read_metrics(self.out_dir) if isinstance(r.get("step"), int) and r["step"] <= step
                and r.get("split") != END]  # the run goes on: how it ended before is no longer its end
        tmp = self.jsonl.with_name(".metrics.jsonl.tmp")  # replaced whole: a full disk cannot cut the history
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(self.jsonl)

    def _writes(self, what: str):
        """Collective (every rank calls it at the same points): rank 0's write failure stops every rank."""
        return writes_agreed(f"{what} in {self.out_dir}", self.out_dir, self.out_dir / "checkpoints")

    def log(self, split: str, step: int, epoch: int, values: dict) -> dict[str, float]:
        """Numbers go to metrics.jsonl, the trackers and the console; Grid values (an evaluation's
        sample images) become PNG grids. Returns the numbers. Call it on every rank; only rank 0 writes."""
        metrics = {k: v for k, v in values.items() if not isinstance(v, Grid)}
        with self._writes(f"log {split} metrics at step {step}"):
            self._write(split, step, epoch, values, metrics)
        return metrics

    def end(self, step: int, epoch: int, status: str, reason: str) -> None:
        """How the run ended, the last row fit() writes: status "finished", "stopped_early", "pruned" (by a
        sweep's pruner) or "preempted" (a signal's exit), and why in one line. Only to metrics.jsonl.
        Collective, like log()."""
        write_end(self.out_dir, self.enabled, step, epoch, status, reason)

    def _write(self, split: str, step: int, epoch: int, values: dict, metrics: dict) -> None:
        if not self.enabled:
            return
        try:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps({"step": step, "epoch": epoch, "split": split, "wall_time": time.time(),
                                    **metrics}) + "\n")
        except OSError as e:  # a failed write() or close() names no file: name it
            raise OSError(e.errno, e.strerror, str(self.jsonl)) from None
        tagged = {f"perf/{k}" if k in PERF else k: v for k, v in metrics.items()}  # system metrics apart
        for t in self.trackers:
            t.log(split, step, tagged)
        if metrics:  # an evaluation without numbers (a GAN with no judge) prints no empty line
            shown = self.progress.line(split, step, metrics) if self.progress else line(split, step, 0, epoch, metrics)
            print(shown, flush=True)
        for tag, grid in values.items():
            if isinstance(grid, Grid):
                self.images(split, tag, step, grid)
        for t in self.trackers:
            t.flush()  # TensorBoard writes from a thread: flushing here surfaces its write errors now

    def images(self, split: str, tag: str, step: int, g: "Grid") -> None:
        """The grid to TensorBoard (samples/<tag> in the split's run) and to out_dir/samples/<tag>_<step>.png."""
        from torchvision.utils import make_grid, save_image

        x = (g.images.detach().float().cpu() + 1) / 2
        grid = make_grid(x.clamp(0, 1), nrow=g.nrow, padding=2, pad_value=1.0)
        for t in self.trackers:
            if hasattr(t, "image"):
                t.image(split, tag, step, grid)
        (self.out_dir / "samples").mkdir(exist_ok=True)
        save_image(grid, self.out_dir / "samples" / f"{tag}_{step:08d}.png")

    def models(self, models: dict) -> None:
        """Parameter counts of each model, as TensorBoard text (`model`)."""
        counts = count_parameters(models)
        text = "\n".join(["| model | parameters |", "|---|---|", *(f"| {k} | {v:,} |" for k, v in counts.items())])
        with self._writes("write the model summary"):
            for t in self.trackers if self.enabled else []:
                if hasattr(t, "text"):
                    t.text("model", text)

    def hparams(self, config: dict, final: dict[str, float]) -> None:
        """At the end: the hyperparameters next to the final metrics, where a tracker shows them so
        (TensorBoard's hparams plugin); config: used when the Logger was made without the run's cfg."""
        metrics = {k: v for k, v in final.items() if isinstance(v, float) and math.isfinite(v)}
        with self._writes("write the hyperparameters"):
            for t in self.trackers if self.enabled else []:
                t.final(self.config or _hparams(config), metrics)
                t.flush()

    def close(self) -> None:
        """In a `finally`: a write error here (the disk filled since the last log) must not hide the
        error that is ending the run, so it is reported, not raised. A second call does nothing."""
        trackers, self.trackers = self.trackers, []
        for t in trackers if self.enabled else []:
            try:
                t.close()
            except Exception as e:  # noqa: BLE001 -- any tracker's failure to flush
                import sys
                print(f"warning: {type(t).__name__} could not close cleanly in {self.out_dir}: {e}",
                      file=sys.stderr, flush=True)
