"""The random-SIGKILL harness runs and reports well-formed results (bench/kill_stress.py, one kill).

The figure for 20 kills is in docs/reliability.md; here only the form, and that the one kill ended
bitwise equal with no process left running.
"""
import json
import os
import subprocess
import sys

import pytest

from support.runs import ROOT


@pytest.mark.heavy
def test_one_kill_is_rerun_and_compared_bitwise(tmp_path):
    out = tmp_path / "kill.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "bench/kill_stress.py", "--kills", "1", "--engines", "ddp", "--json", str(out),
                           "--out-root", str(tmp_path / "runs")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    rep = json.loads(out.read_text())
    assert (rep["kills"], rep["good"], rep["bitwise_equal"], rep["left_running"]) == (1, 1, 1, 0), rep
    (r,) = rep["results"]
    assert r["engine"] == "ddp" and r["killed"] in ("agent", "worker") and r["phase"] in ("start-up", "training"), r
    assert "1 kills (ddp, seed 0, " in proc.stdout and "): 1 bitwise equal" in proc.stdout
