"""A file system that fills up or turns read-only under a real run, on 1 and 2 processes: a small real
tmpfs as out_dir (tests/tmpfs.py, needs root). Every rank exits 2 with one message naming the newest
intact checkpoint; after freeing space the same command resumes from it and finishes."""
import signal
import subprocess

import pytest

from helpers import ROOT, recipe_command, run_recipe
from tmpfs import tmpfs  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow
# mnist_mlp: a checkpoint is about 15 MB (weights + momentum). With 40 MB the checkpoints of steps 4
# and 8 fit and the one of step 12 does not.
RUN = ("train.max_steps=16", "train.ckpt_every_steps=4", "ckpt.keep_last=10", "ckpt.best_metric=none")


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("nproc", [1, 2])
def test_disk_full_stops_every_rank_with_exit_2_naming_the_intact_checkpoint(tmpfs, nproc):
    fs = tmpfs("40m")
    out = fs.path / "run"
    cmd, env = recipe_command("mnist_mlp", f"out_dir={out}", *RUN, nproc=nproc)
    if nproc > 1:
        # every rank's exit code in torchrun's summary; a slow monitor lets both ranks end on their own
        cmd[3:3] = ["--monitor-interval=5"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    intact = f"newest intact checkpoint is {out}/checkpoints/step_00000008."
    lines = errors(p.stderr)
    assert len(lines) == nproc, p.stderr[-4000:]  # one message per rank, the same on each
    assert all(intact in line and "no space left on device" in line.lower() for line in lines), lines
    if nproc == 1:
        assert p.returncode == 2, p.stderr[-3000:]
    else:
        assert p.stderr.count("exitcode  : 2") == 2, p.stderr[-4000:]  # rank 0 and rank 1
    assert "Connection closed by peer" not in p.stderr
    fs.remount("size=200m")
    again = run_recipe("mnist_mlp", f"out_dir={out}", *RUN, nproc=nproc)
    assert f"resumed from {out}/checkpoints/step_00000008: step 8" in again.stdout, again.stdout[-3000:]


def test_read_only_file_system_mid_run_is_exit_2_naming_the_intact_checkpoint(tmpfs, tmp_path):
    # Linux refuses to make a file system read-only while a file on it is open for writing (TensorBoard's
    # events file is, for the whole run), so the checkpoints live on their own tmpfs.
    out = tmp_path / "run"
    fs = tmpfs("200m", out / "checkpoints")
    cmd, env = recipe_command("mnist_mlp", f"out_dir={out}", *RUN, fault="pause=10")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        for line in proc.stdout:  # checkpoints 4 and 8 are written before step 10
            if "paused at step 10" in line:
                break
        fs.remount("ro")
        proc.send_signal(signal.SIGUSR1)  # resume the paused step; the run then asks for a checkpoint
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 2, stderr[-3000:]
    (line,) = errors(stderr)
    assert "read-only file system" in line.lower() and f"newest intact checkpoint is {out}/checkpoints/step_00000008." in line
    fs.remount("rw")
    again = run_recipe("mnist_mlp", f"out_dir={out}", *RUN)
    assert f"resumed from {out}/checkpoints/step_00000008: step 8" in again.stdout, again.stdout[-3000:]
