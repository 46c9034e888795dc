"""A file system that fills up or turns read-only under a real run, on 1 and 2 processes: a small real
tmpfs as out_dir (tests/support/tmpfs.py, needs root). Every rank exits 2 with one message naming the newest
intact checkpoint; after freeing space the same command resumes from it and finishes."""
import os
import shutil
import signal
import subprocess
import sys

import pytest

from support.runs import ROOT, recipe_command, run_ranks, run_recipe
from support.tmpfs import quota_fs, tmpfs  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
# mnist_mlp: a checkpoint is about 15 MB (weights + momentum). With 40 MB the checkpoints of steps 4
# and 8 fit and the one of step 12 does not.
RUN = ("train.max_steps=16", "train.ckpt_every_steps=4", "ckpt.keep_last=10", "ckpt.best_metric=none")


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def stop_on_every_rank(cmd: list[str], env: dict, nproc: int) -> list[str]:
    """Run `cmd` (recipe_command's); every rank must stop with exit code 2 and one `error:` line.
    Returns those lines. Several ranks run as processes of their own (run_ranks), so each one's exit
    code is its own, never a launcher's SIGTERM after the first one ended."""
    if nproc > 1:
        codes, p = run_ranks(cmd, env)
        assert codes == [2] * nproc, (codes, p.stderr[-4000:])
    else:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert p.returncode == 2, p.stderr[-3000:]
    lines = errors(p.stderr)
    assert len(lines) == nproc, p.stderr[-4000:]  # one message per rank, the same on each
    assert "Connection closed by peer" not in p.stderr
    return lines


@pytest.mark.parametrize("nproc", [pytest.param(1, marks=pytest.mark.heavy), 2])
def test_disk_full_stops_every_rank_with_exit_2_naming_the_intact_checkpoint(tmpfs, nproc):
    fs = tmpfs("40m")
    out = fs.path / "run"
    lines = stop_on_every_rank(*recipe_command("mnist_mlp", f"out_dir={out}", *RUN, nproc=nproc), nproc)
    intact = f"newest intact checkpoint is {out}/checkpoints/step_00000008."
    assert all(intact in line and "no space left on device" in line.lower() for line in lines), lines
    fs.remount("size=200m")
    again = run_recipe("mnist_mlp", f"out_dir={out}", *RUN, nproc=nproc)
    assert f"resumed from {out}/checkpoints/step_00000008: step 8" in again.stdout, again.stdout[-3000:]


def test_quota_exceeded_stops_every_rank_with_exit_2_naming_the_intact_checkpoint(quota_fs):
    """A real quota (a btrfs qgroup limit), not a full disk: the file system has room, statvfs says so, and
    torch.save's wrapped error is all there is to go on."""
    fs = quota_fs("40M")
    out = fs.path / "run"
    lines = stop_on_every_rank(*recipe_command("mnist_mlp", f"out_dir={out}", *RUN, nproc=2), 2)
    assert all("disk quota exceeded" in line.lower() and f"newest intact checkpoint is {out}/checkpoints/step_00000008."
               in line for line in lines), "\n".join(lines)
    fs.limit("400M")
    again = run_recipe("mnist_mlp", f"out_dir={out}", *RUN, nproc=2)
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


# Under engine=deepspeed and fsdp every rank writes its own partition, so one rank's disk can fill while
# rank 0's does not. To make exactly that happen, every time, rank 1 runs in its own mount namespace
# where a 1 MiB tmpfs covers the checkpoints directory (its partition is several MiB); rank 0 and the
# test see the real directory. dist_timeout_s bounds the wait if a rank were left behind in a collective.
WRAPPER = """#!/bin/sh
if [ "$RANK" = 1 ]; then
  exec unshare --mount --propagation private sh -c 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"' "$CKPTS" "$@"
fi
exec "$@"
"""


@pytest.mark.parametrize("engine", [("engine=deepspeed", "deepspeed_config=launch/deepspeed/zero2.json"),
                                    ("engine=fsdp",), ("engine=fsdp", "ckpt.async_save=true")],
                         ids=["deepspeed", "fsdp", "fsdp-async"])
def test_one_ranks_disk_full_in_its_partition_write_stops_every_rank(tmp_path, engine):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a mount namespace for one rank needs root and unshare (util-linux)")
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)  # the mount point, in rank 1's namespace
    wrapper = tmp_path / "rank1_disk_full.sh"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    cmd, env = recipe_command("mnist_mlp", f"out_dir={out}", *engine, "train.max_steps=8", "train.ckpt_every_steps=4",
                              "ckpt.best_metric=none", "dist_timeout_s=60", nproc=2)
    script = cmd.index(str(ROOT / "recipes" / "mnist_mlp.py"))
    cmd[script:script] = [str(wrapper), sys.executable]
    cmd[3:3] = ["--no-python"]
    env.update(CKPTS=str(out / "checkpoints"), DS_ACCELERATOR="cpu")
    lines = stop_on_every_rank(cmd, env, 2)
    assert all(f"could not write checkpoint {out}/checkpoints/step_00000004: on rank 1: no space left on device"
               in line and "newest intact checkpoint is none" in line for line in lines), "\n".join(lines)
    assert not any(p.name.startswith((".shards-", "step_")) for p in (out / "checkpoints").iterdir())
