"""Observations of engine=fsdp from inside a run's processes (tests/dist/test_fsdp.py starts this with torchrun).

    fsdp_worker.py loaded CKPT [recipe overrides...]   resume from CKPT; every rank's gathered weights must
                                                        equal the checkpoint's, read alone by read_full_weights
    fsdp_worker.py accum [recipe overrides...]         one optimizer step of train.grad_accum micro-batches
                                                        under torch.profiler: the collectives each micro-step ran
    fsdp_worker.py overflow [recipe overrides...]      precision=fp16: one step whose gradient is inf in one element
                                                        of rank 0's shard only; did each rank step, and its loss scale

Each prints one JSON line prefixed `fsdp_worker:` on rank 0.
"""
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from common import dist
from common.cli import parse_cli
from common.engines.base import full_tensor
from common.engines.fsdp import read_full_weights
from common.train.runtime import runtime
from common.train.loop import resume, total_steps
from common.train.checkpoint import Checkpointer
from support.runs import load_recipe

COLLECTIVES = ("c10d::_reduce_scatter_base_", "c10d::reduce_scatter_", "c10d::_allgather_base_", "c10d::allgather_",
               "c10d::allreduce_")


def build(argv):
    task = load_recipe("mnist_mlp").task
    cli = parse_cli(task.Config, task.script, argv)
    return task, cli


def loaded(ckpt: str, argv) -> dict:
    task, cli = build([*argv, f"resume={ckpt}"])
    with runtime(cli.cfg) as rt:
        loaders = task.build_data(cli.cfg, rt)
        state = task.build_state(cli.cfg, rt, loaders)
        resume(cli.cfg, state, rt, Checkpointer(Path(ckpt).parent), "mnist_mlp", total_steps(cli.cfg, loaders.train))
        saved = read_full_weights(ckpt)["net"]
        mine = {k: full_tensor(p.detach()) for k, p in state.models["net"].state_dict().items()}
        worst = max((mine[k] - saved[k]).abs().max().item() for k in saved)
        exact = mine.keys() == saved.keys() and all(torch.equal(mine[k], saved[k]) for k in saved)
        local = sum(p.to_local().numel() for p in state.models["net"].parameters())
        return rt.is_main, {"world": rt.world_size, "step": state.step, "exact": exact, "max_abs_diff": worst,
                            "local_numel": local, "full_numel": sum(v.numel() for v in saved.values())}


def accum(argv) -> dict:
    task, cli = build(argv)
    with runtime(cli.cfg) as rt:
        loaders = task.build_data(cli.cfg, rt)
        state = task.build_state(cli.cfg, rt, loaders)
        loaders.train.set_epoch(0, 0)
        micro_batches = next(iter(loaders.train))
        per_micro = []
        for i, batch in enumerate(micro_batches):
            with profile(activities=[ProfilerActivity.CPU]) as prof, rt.micro_step(i, len(micro_batches)):
                task.train_step(cli.cfg, batch, state, rt)
            per_micro.append(dict(Counter(e.name for e in prof.events() if e.name in COLLECTIVES)))
        grads = [p.grad is None for p in state.models["net"].parameters()]
        return rt.is_main, {"micro_steps": per_micro, "grads_cleared_after_step": all(grads)}


def overflow(argv) -> dict:
    task, cli = build(argv)
    with runtime(cli.cfg) as rt:
        loaders = task.build_data(cli.cfg, rt)
        state = task.build_state(cli.cfg, rt, loaders)
        loaders.train.set_epoch(0, 0)
        (batch,) = next(iter(loaders.train))
        params = list(state.models["net"].parameters())
        before = [p.to_local().clone() for p in params]
        scale = rt.scaler.get_scale()
        with rt.micro_step(0, 1):
            with rt.autocast():
                loss = torch.nn.functional.cross_entropy(state.models["net"](batch[0]), batch[1])
            rt.backward(loss)
            if rt.rank == 0:
                params[0].grad.to_local().view(-1)[0] = float("inf")  # an overflow only this rank's shard sees
            rt.step(state.optims["net"])
        rt.end_step()
        moved = any(not torch.equal(p.to_local(), b) for p, b in zip(params, before))
        seen = dist.all_gather_object({"rank": rt.rank, "stepped": moved, "scale": rt.scaler.get_scale()})
        return rt.is_main, {"scale_before": scale, "ranks": seen}


def main():
    mode, *rest = sys.argv[1:]
    is_main, out = loaded(rest[0], rest[1:]) if mode == "loaded" else accum(rest) if mode == "accum" else overflow(rest)
    if is_main:
        print("fsdp_worker: " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
