"""engine=deepspeed's JSON config (`deepspeed_config=`, a file from launch/deepspeed/, `//` comments allowed).

Values written "auto" come from the recipe config, so one YAML drives every engine:

    train_batch_size                 train.batch_size (global)
    train_micro_batch_size_per_gpu   train.batch_size / (world size x train.grad_accum)
    gradient_accumulation_steps      train.grad_accum
    gradient_clipping                train.clip_grad_norm
    bf16.enabled / fp16.enabled      precision=bf16 / precision=fp16

A number that contradicts the recipe config is an error. The optimizer and LR schedule stay the
recipe's (`optim.*`), so "optimizer"/"scheduler" sections in the JSON are refused.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from common.config import UserError, flatten

REPO = Path(__file__).resolve().parents[2]
# The JSON keys filled from the recipe config (where each comes from).
FROM_RECIPE = {"train_batch_size": "train.batch_size", "train_micro_batch_size_per_gpu": "train.batch_size / (world x grad_accum)",
               "gradient_accumulation_steps": "train.grad_accum", "gradient_clipping": "train.clip_grad_norm"}
SETTING = "deepspeed_config:"  # prefix of a setting read from the JSON, as resume messages show it

def _strip_comments(text: str) -> str:
    """Remove // comments outside JSON strings."""
    return re.sub(r'("(?:\\.|[^"\\])*")|//[^\n]*', lambda m: m.group(1) or "", text)


def find_config(path: str) -> Path:
    p = Path(path)
    for candidate in (p, REPO / p):
        if candidate.is_file():
            return candidate
    raise UserError(f"deepspeed_config={path!r} not found (looked in the working directory and {REPO}); "
                    f"the configs shipped are {', '.join(sorted(q.name for q in (REPO / 'launch/deepspeed').glob('*.json')))}")


def resolve_config(path: Path, cfg, world_size: int) -> dict:
    """The JSON with "auto" filled from the recipe config; contradictions are errors."""
    try:
        ds = json.loads(_strip_comments(path.read_text()))
    except ValueError as e:
        raise UserError(f"deepspeed_config {path} is not valid JSON (after removing // comments): {e}") from None
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise UserError(f"deepspeed_config {path} has an '{key}' section; dtrain builds the optimizer and LR "
                            "schedule from optim.* in the recipe config: remove the section")
    t = cfg.train
    wanted = {"train_batch_size": t.batch_size, "train_micro_batch_size_per_gpu": t.batch_size // (world_size * t.grad_accum),
              "gradient_accumulation_steps": t.grad_accum, "gradient_clipping": t.clip_grad_norm}
    for key, value in wanted.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise UserError(f"deepspeed_config {path} sets {key}={ds[key]} but the recipe config gives {value} "
                            f"({FROM_RECIPE[key]}): write \"auto\" in the JSON, or change the recipe config")
    for dtype in ("bf16", "fp16"):
        section = ds.setdefault(dtype, {})
        enabled = section.get("enabled", "auto")
        if enabled == "auto":
            section["enabled"] = cfg.precision == dtype
        elif bool(enabled) != (cfg.precision == dtype):
            raise UserError(f"deepspeed_config {path} sets {dtype}.enabled={enabled} but precision={cfg.precision}: "
                            f"write \"auto\" in the JSON, or set precision={dtype if enabled else 'fp32'}")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage == 3 and t.ema_decay > 0:
        raise UserError("train.ema_decay needs the full weights on every rank after each step; ZeRO stage 3 "
                        "partitions them: use ZeRO-1/2 (launch/deepspeed/zero2.json) or train.ema_decay=0")
    if t.activation_checkpointing:
        raise UserError("train.activation_checkpointing=true is not wired for engine=deepspeed (ZeRO-3 gathers "
                        "parameters in module hooks that recomputation bypasses; DeepSpeed has its own "
                        "activation_checkpointing section): use engine=fsdp or ddp, or set it to false")
    if t.compile:
        raise UserError("train.compile=true is not wired for engine=deepspeed (DeepSpeed has its own "
                        "compile: engine.compile()); use train.compile=false")
    return ds


def json_settings(ds: dict) -> dict:
    """The resolved JSON as flat settings ("deepspeed_config:zero_optimization.stage": 2), less the keys
    filled from train.* (compared as those keys). The stage is recorded even when the JSON leaves it out."""
    flat = flatten({k: v for k, v in ds.items() if k not in FROM_RECIPE}, SETTING)
    flat.setdefault(f"{SETTING}zero_optimization.stage", 0)
    return flat
