"""Run a recipe with a fault injected into its train_step (tests only).

    python tests/faulty.py <recipe> <fault> [recipe args...]
    torchrun --nproc_per_node=2 tests/faulty.py <recipe> <fault> [recipe args...]

Faults (N = optimizer step being computed, 1-based):
    nan_from=N        the loss becomes NaN from step N on (a diverged run)
    nan_at=N          the loss is NaN at step N only (an fp16 overflow)
    raise=R@N         rank R raises RuntimeError("injected fault") at step N
"""
import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main():
    recipe, fault, *argv = sys.argv[1:]
    spec = importlib.util.spec_from_file_location(recipe, ROOT / "recipes" / f"{recipe}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kind, _, arg = fault.partition("=")
    original = mod.train_step

    def train_step(batch, state, rt):
        step = state.step + 1
        if kind == "raise":
            rank, at = map(int, arg.split("@"))
            if rt.rank == rank and step == at:
                raise RuntimeError(f"injected fault on rank {rank} at step {step}")
        if (kind == "nan_from" and step >= int(arg)) or (kind == "nan_at" and step == int(arg)):
            x, y = batch
            batch = (x * float("nan"), y)
        return original(batch, state, rt)

    mod.train_step = train_step
    mod.main(argv)


if __name__ == "__main__":
    from common.entry import run
    run(main)
