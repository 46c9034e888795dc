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
    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        self.out_dir = Path(out_dir)
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = Path(out_dir) / "metrics.jsonl"
        if resume_step > 0 and self.jsonl.exists():
            self._truncate_after(resume_step)
        elif resume_step == 0 and self.jsonl.exists():
            self.jsonl.unlink()  # a fresh run owns the directory's history
        self.tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=resume_step if resume_step > 0 else None)

    def _truncate_after(self, step: int) -> None:
        keep = [r for r in read_metrics(self.out_dir) if isinstance(r.get("step"), int) and r["step"] <= step]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def log(self, split: str, step: int, epoch: int, values: dict) -> dict[str, float]:
        """Numbers go to metrics.jsonl, TensorBoard and the console; Grid values (an evaluation's
        sample images) become PNG grids. Returns the numbers. Call it on every rank; only rank 0 writes."""
        metrics = {k: v for k, v in values.items() if not isinstance(v, Grid)}
        if not self.enabled:
            return metrics
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, "epoch": epoch, "split": split, **metrics}) + "\n")
        for k, v in metrics.items():
            self.tb.add_scalar(f"{split}/{k}", v, step)
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"[{split}] step {step} epoch {epoch} {shown}", flush=True)
        for tag, grid in values.items():
            if isinstance(grid, Grid):
                self.images(tag, step, grid)
        return metrics

    def images(self, tag: str, step: int, g: "Grid") -> None:
        """The grid to TensorBoard (samples/<tag>) and to out_dir/samples/<tag>_<step>.png."""
        from torchvision.utils import make_grid, save_image

        x = (g.images.detach().float().cpu() + 1) / 2
        grid = make_grid(x.clamp(0, 1), nrow=g.nrow, padding=2, pad_value=1.0)
        self.tb.add_image(f"samples/{tag}", grid, step)
        (self.out_dir / "samples").mkdir(exist_ok=True)
        save_image(grid, self.out_dir / "samples" / f"{tag}_{step:08d}.png")

    def hparams(self, config: dict, final: dict[str, float]) -> None:
        if not self.enabled:
            return
        metrics = {f"hparam/{k}": v for k, v in final.items() if isinstance(v, float) and math.isfinite(v)}
        self.tb.add_hparams(_flat(config), metrics, run_name="hparams")

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
