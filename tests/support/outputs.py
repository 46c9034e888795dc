"""What a finished run wrote: metrics.jsonl rows, the newest checkpoint, the final weights."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def metrics(out_dir: Path) -> list[dict]:
    """Every row of out_dir/metrics.jsonl (none if it is missing). Strict, unlike common.train.log.read_metrics:
    a cut or malformed line fails the test instead of being skipped."""
    f = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def last_checkpoint_step(out_dir: Path) -> int | None:
    steps = [int(p.name.split("_")[1]) for p in (Path(out_dir) / "checkpoints").glob("step_*")]
    return max(steps) if steps else None


def final_weights(out_dir: Path, model: str = "net") -> dict[str, torch.Tensor]:
    from common.formats.checkpoint import load_file
    step = last_checkpoint_step(out_dir)
    return load_file(Path(out_dir) / "checkpoints" / f"step_{step:08d}")["models"][model]


def resume_dir_from(run: Path, step: int, out_dir: Path) -> Path:
    """out_dir holding only run's checkpoint of `step` (a resume there starts from it and nothing else)."""
    import shutil
    name = f"step_{step:08d}"
    shutil.copytree(Path(run) / "checkpoints" / name, Path(out_dir) / "checkpoints" / name)
    return Path(out_dir)
