"""Test driver: every rank asks for the first-use judge, trained on the schedule of the YAML given.

    torchrun --nproc_per_node=2 tests/support/judge_worker.py JUDGE.yaml

Each rank prints `rank R judge PATH` with the judge directory it got.
"""
import sys
from pathlib import Path

from common.config import BaseConfig
from common.tasks.judge import auto_judge
from common.train.runtime import runtime

with runtime(BaseConfig(device="cpu")) as rt:
    where = auto_judge(rt, Path(sys.argv[1]), ("device=cpu", "train.progress=false"))
    print(f"rank {rt.rank} judge {where}", flush=True)
