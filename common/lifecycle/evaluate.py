"""`--evaluate RUN_DIR_OR_CHECKPOINT [--weights ema|raw] [key=value ...]`: evaluate without training.

The model and data come from the checkpoint's config (common/lifecycle/source.py says which keys may
still change); the task's own evaluate runs on the eval split with the training run's exact counts
(unpadded shards, one all-reduce), under any launcher and world size. The metrics are printed and
appended to the run's metrics.jsonl as split "eval", with the checkpoint and weights used.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from common import dist
from common.config import UserError
from common.data.gpu_decode import require_cuda
from common.lifecycle.source import build_data, open_source
from common.train.rundir import LockHeld, held
from common.train.runtime import runtime
from common.train.state import TrainState
from common.train.weights import checkpoint_weights

SPLIT = "eval"  # an --evaluate row; training's own evaluations are "val" (same eval split, during training)


def run(task, cli) -> dict[str, float]:
    src = open_source(cli)
    cfg = src.cfg
    with runtime(cfg) as rt:
        if src.ignored:
            rt.log(f"--evaluate ignores training settings: {', '.join(src.ignored)}")
        require_cuda(cfg.data, rt.device)  # data.decode=gpu (data.decode=pil may be given here)
        loaders = build_data(task, src, rt)
        weights, which = checkpoint_weights(src.ckpt, src.sd, cli.weights)
        rt.seed()
        models = task.build_models(cfg, loaders)
        for name, model in models.items():
            model.load_state_dict(weights[name])
        # No optimizer and no engine wrapper: evaluation only runs forward passes; the weights chosen
        # are the models themselves (state.eval_model(name) returns them).
        state = TrainState(models={k: rt.place(m) for k, m in models.items()}, optims={},
                           step=src.sd["step"], epoch=src.sd["epoch"])
        out = task.evaluate(cfg, state, rt, loaders.eval)
        numbers = {k: v for k, v in out.items() if isinstance(v, (int, float))}
        if not numbers:
            judge = getattr(getattr(cfg, "eval", None), "classifier", None)
            raise UserError(f"--evaluate: {cli.recipe}'s evaluation gave no metrics" + (
                f" with eval.classifier={judge} (the Fréchet distance needs the judge classifier): set "
                "eval.classifier=RUN_DIR of an mnist_cnn run, or auto" if judge in ("", "none") else ""))
        row = {"step": state.step, "epoch": state.epoch, "split": SPLIT, **numbers,
               "checkpoint": str(src.ckpt), "weights": which}
        where = src.run_dir / "metrics.jsonl" if src.run_dir else None
        if rt.is_main:
            shown = " ".join(f"{k} {v:.6g}" for k, v in numbers.items())
            rt.log(f"evaluated {src.ckpt} ({src.why}; {which} weights) on the eval split, "
                   f"{rt.world_size} process(es)\n[{SPLIT}] step {state.step} {shown}")
        if where:
            dist.on_main(lambda: record(where, row))
        rt.log(f"appended to {where}" if where else "not written to a metrics.jsonl (no run directory)")
    return numbers


def record(where: Path, row: dict) -> None:
    """Append the row to a run's metrics.jsonl under the run's lock (never beside a run training
    there); a failed append leaves the file as it was. The figures are printed before this."""
    failed = f"--evaluate: the figures above were not recorded in {where}"
    try:
        with held(where.parent), open(where, "ab", buffering=0) as f:
            size, rest = f.seek(0, os.SEEK_END), memoryview((json.dumps(row) + "\n").encode())
            try:
                while rest:  # a short write (the disk filled mid-row) is followed by one that raises
                    rest = rest[f.write(rest):]
            except OSError:
                os.ftruncate(f.fileno(), size)  # no half row for the next reader (freeing space needs none)
                raise
    except LockHeld as e:
        raise UserError(f"{failed}: a run is training there ({e.holder}); run --evaluate again when it has "
                        "finished") from None
    except OSError as e:
        raise UserError(f"{failed}: {e}. Make {where.parent} writable (or free space there) and run --evaluate "
                        "again to record them") from None
