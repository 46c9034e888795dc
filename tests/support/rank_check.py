"""Test driver: run a GAN recipe exactly like its main(), then record a digest of every rank's state.

    torchrun --nproc_per_node=2 tests/support/rank_check.py recipes/dcgan.py --config ... key=value ...

Each rank writes out_dir/ranks/rank<r>.json: sha256 of every tensor of both nets, the EMA and
both optimizers, before and after training. The test compares the ranks' files.
"""
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import torch

from common.cli import parse_cli
from common.train.loop import fit
from common.engines.base import unwrap
from common.train.runtime import runtime


def tensors(state) -> dict[str, torch.Tensor]:
    out = {}
    for name, model in state.models.items():
        out.update({f"models.{name}.{k}": v for k, v in unwrap(model).state_dict().items()})
    for name, ema in state.ema.items():
        out.update({f"ema.{name}.{k}": v for k, v in ema.state_dict().items()})
    for name, opt in state.optims.items():
        for pid, slots in opt.state_dict()["state"].items():
            out.update({f"optims.{name}.{pid}.{k}": v for k, v in slots.items() if torch.is_tensor(v)})
    return out


def digest(state) -> dict[str, str]:
    return {k: hashlib.sha256(v.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
            for k, v in tensors(state).items()}


def main():
    script, argv = sys.argv[1], sys.argv[2:]
    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    cli = parse_cli(recipe.Config, script, argv)
    with runtime(cli.cfg) as rt:
        loaders = recipe.task.build_data(cli.cfg, rt)
        state = recipe.task.build_state(cli.cfg, rt, loaders)
        before = digest(state)
        fit(cli.cfg, state, rt, loaders, recipe.task.train_step, recipe.task.evaluate, cli.recipe)
        out = Path(cli.cfg.out_dir) / "ranks"
        out.mkdir(exist_ok=True)
        (out / f"rank{rt.rank}.json").write_text(json.dumps({"before": before, "after": digest(state)}))


if __name__ == "__main__":
    from common.entry import exit_after
    exit_after(main)
