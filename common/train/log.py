"""Rank-0 logging: TensorBoard scalars and hparams, metrics.jsonl, console lines, image grids.

Other ranks get a logger whose methods do nothing, so callers never branch on rank.
Only already-reduced numbers arrive here. On resume, events after the resumed step
are dropped from both metrics.jsonl and TensorBoard (purge_step), so curves continue
without overlap.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
import math

import torch
from pathlib import Path


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


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

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        with self._writes("open the logs"):
            self._open(resume_step)

    def _open(self, resume_step: int) -> None:
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = self.out_dir / "metrics.jsonl"
        if resume_step > 0 and self.jsonl.exists():
            self._truncate_after(resume_step)
        elif resume_step == 0 and self.jsonl.exists():
            self.jsonl.unlink()  # a fresh run owns the directory's history
        self.tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=resume_step if resume_step > 0 else None)

    def _truncate_after(self, step: int) -> None:
        keep = [r for r in read_metrics(self.out_dir) if isinstance(r.get("step"), int) and r["step"] <= step]
        tmp = self.jsonl.with_name(".metrics.jsonl.tmp")  # replaced whole: a full disk cannot cut the history
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        tmp.replace(self.jsonl)

    def log(self, split: str, step: int, epoch: int, values: dict) -> dict[str, float]:
        """Numbers go to metrics.jsonl, TensorBoard and the console; Grid values (an evaluation's
        sample images) become PNG grids. Returns the numbers. Call it on every rank; only rank 0 writes."""
        metrics = {k: v for k, v in values.items() if not isinstance(v, Grid)}
        with self._writes(f"log {split} metrics at step {step}"):
            self._write(split, step, epoch, values, metrics)
        return metrics

    def _writes(self, what: str):
        """Collective (every rank calls it at the same points): rank 0's write failure stops every rank."""
        from common.train.checkpoint import writes_agreed
        return writes_agreed(f"{what} in {self.out_dir}", self.out_dir, self.out_dir / "checkpoints")

    def _write(self, split: str, step: int, epoch: int, values: dict, metrics: dict) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, "epoch": epoch, "split": split, **metrics}) + "\n")
        for k, v in metrics.items():
            self.tb.add_scalar(f"{split}/{k}", v, step)
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"[{split}] step {step} epoch {epoch} {shown}", flush=True)
        for tag, grid in values.items():
            if isinstance(grid, Grid):
                self.images(tag, step, grid)
        self.tb.flush()  # TensorBoard writes from a thread: flushing here surfaces its write errors now

    def images(self, tag: str, step: int, g: "Grid") -> None:
        """The grid to TensorBoard (samples/<tag>) and to out_dir/samples/<tag>_<step>.png."""
        from torchvision.utils import make_grid, save_image

        x = (g.images.detach().float().cpu() + 1) / 2
        grid = make_grid(x.clamp(0, 1), nrow=g.nrow, padding=2, pad_value=1.0)
        self.tb.add_image(f"samples/{tag}", grid, step)
        (self.out_dir / "samples").mkdir(exist_ok=True)
        save_image(grid, self.out_dir / "samples" / f"{tag}_{step:08d}.png")

    def hparams(self, config: dict, final: dict[str, float]) -> None:
        with self._writes("write TensorBoard hparams"):
            if self.enabled:
                metrics = {f"hparam/{k}": v for k, v in final.items() if isinstance(v, float) and math.isfinite(v)}
                self.tb.add_hparams(_flat(config), metrics, run_name="hparams")
                self.tb.flush()

    def close(self) -> None:
        """In a `finally`: a write error here (the disk filled since the last log) must not hide the
        error that is ending the run, so it is reported, not raised."""
        if self.enabled and hasattr(self, "tb"):
            try:
                self.tb.close()
            except (OSError, RuntimeError) as e:
                import sys
                print(f"warning: TensorBoard events in {self.out_dir / 'tb'} could not be flushed: {e}",
                      file=sys.stderr, flush=True)
