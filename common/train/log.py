"""Rank-0 logging: metrics.jsonl, console lines, image grids, and the trackers of `log.backends`
(TensorBoard by default, W&B, MLflow: common/train/trackers.py).

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

from common import dist
from common.config import LogConfig, UserError, to_dict
from common.train.trackers import check_installed, open_trackers


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
    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0, cfg=None):
        """cfg: the run's config (log.backends, hyperparameters); None = TensorBoard, no hyperparameters.
        Collective: every rank raises the same error if rank 0 cannot open a tracker."""
        log_cfg = cfg.log if cfg is not None else LogConfig()
        check_installed(log_cfg.backends)
        self.enabled, self.trackers, error = enabled, [], None
        if enabled:
            self.out_dir = Path(out_dir)
            self.jsonl = Path(out_dir) / "metrics.jsonl"
            if resume_step > 0 and self.jsonl.exists():
                self._truncate_after(resume_step)
            elif resume_step == 0 and self.jsonl.exists():
                self.jsonl.unlink()  # a fresh run owns the directory's history
            self.config = _flat(to_dict(cfg)) if cfg is not None else {}
            try:
                self.trackers = open_trackers(log_cfg, self.out_dir, resume_step, self.config)
            except Exception as e:  # noqa: BLE001 -- any library's failure, named, on every rank
                error = f"log.backends={list(log_cfg.backends)}: a tracker failed to start: {type(e).__name__}: {e}"
        error = dist.broadcast_object(error)
        if error:
            raise UserError(error)

    def _truncate_after(self, step: int) -> None:
        keep = [r for r in read_metrics(self.out_dir) if isinstance(r.get("step"), int) and r["step"] <= step]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def log(self, split: str, step: int, epoch: int, values: dict) -> dict[str, float]:
        """Numbers go to metrics.jsonl, the trackers and the console; Grid values (an evaluation's
        sample images) become PNG grids. Returns the numbers. Call it on every rank; only rank 0 writes."""
        metrics = {k: v for k, v in values.items() if not isinstance(v, Grid)}
        if not self.enabled:
            return metrics
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, "epoch": epoch, "split": split, **metrics}) + "\n")
        for t in self.trackers:
            t.log(split, step, metrics)
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"[{split}] step {step} epoch {epoch} {shown}", flush=True)
        for tag, grid in values.items():
            if isinstance(grid, Grid):
                self.images(split, tag, step, grid)
        return metrics

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
        if not self.enabled:
            return
        from common.engines.base import unwrap
        rows = [f"| {name} | {sum(p.numel() for p in unwrap(m).parameters()):,} | "
                f"{sum(p.numel() for p in unwrap(m).parameters() if p.requires_grad):,} |" for name, m in models.items()]
        text = "\n".join(["| model | parameters | trainable |", "|---|---|---|", *rows])
        for t in self.trackers:
            if hasattr(t, "text"):
                t.text("model", text)

    def hparams(self, config: dict, final: dict[str, float]) -> None:
        """At the end: the hyperparameters next to the final metrics, where a tracker shows them so
        (TensorBoard's hparams plugin); config: kept for callers, the Logger has the run's own."""
        if not self.enabled:
            return
        metrics = {k: v for k, v in final.items() if isinstance(v, float) and math.isfinite(v)}
        for t in self.trackers:
            t.final(self.config or _flat(config), metrics)

    def close(self) -> None:
        if self.enabled:
            for t in self.trackers:
                t.close()
