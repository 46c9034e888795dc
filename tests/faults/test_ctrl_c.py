"""Ctrl-C in a running recipe process: a checkpoint at the next step boundary, then exit 130 without a traceback."""
import signal
import subprocess

from common.formats.checkpoint import verify
from common.train.preempt import EXIT_INTERRUPTED
from support.runs import ROOT, recipe_command


def test_ctrl_c_checkpoints_at_the_next_step_and_exits_130(tmp_path):
    out = tmp_path / "run"
    cmd, env = recipe_command("mnist_mlp", f"out_dir={out}", fault="pause=5")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "faulty: rank 0 paused at step 5" in line:
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == EXIT_INTERRUPTED, log[-3000:]
    assert "interrupted (Ctrl-C): checkpoint at step 5 written; exiting with code 130" in log, log[-3000:]
    assert "press Ctrl-C again to exit at once" in log
    assert verify(out / "checkpoints" / "step_00000005") is None
    assert "Traceback" not in log
