"""Every file the product writes, under every write fault: one table of (writer x fault), each cell a real
fault and the same expectation: exit code 2 (a UserError, which common/entry.py turns into it) with one
line naming the file or directory and the fault, no traceback.

The faults, made real at the directory the writer writes into (`Writer.where`):
  read-only       a tmpfs mounted there, written once, then remounted read-only (root ignores chmod)
  full            a small tmpfs mounted there, written once, then filled to the last byte
  missing parent  the directory the file goes in is gone (`Writer.gone`: removed under a running run, or
                  never there for --export --to); a directory the product would recreate (samples/,
                  checkpoints/) is not the one removed: its run directory is

A new writer joins by adding a Writer to WRITERS (docs/reliability.md says so). Needs root (mount).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from common.config import UserError
from common.entry import run
from common.train.checkpoint import Checkpointer
from common.train.log import Grid, Logger
from support.inprocess import run_inprocess
from support.runs import ROOT, load_recipe, recipe_command
from support.tmpfs import tmpfs  # noqa: F401 (a fixture)

MLP = load_recipe("mnist_mlp")
FAULTS = {"read-only": "read-only file system", "full": "no space left on device",
          "missing parent": ("no such file or directory", "does not exist")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished mnist_mlp debug run (one checkpoint, step 4)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    run_inprocess("mnist_mlp", f"out_dir={out}", "train.max_steps=4")
    return out


def command_fails(capsys, *argv) -> tuple[str, str]:
    """Run a recipe command in-process: exit code 2 and one `error:` line, no traceback. (stdout, that line)."""
    with pytest.raises(SystemExit) as e:
        run(MLP.task, MLP.task.script, [*argv, "device=cpu", "train.progress=false"])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and "Traceback" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    return out, line


def user_error(write: Callable[[], object]) -> str:
    with pytest.raises(UserError) as e:
        write()
    return str(e.value)


def metrics_only():
    cfg = MLP.Config()
    cfg.log.backends = []
    return cfg


@dataclass
class Writer:
    """where(run): the directory the writer writes into (the fault goes there); gone(run): the directory a
    missing-parent fault removes; prepare(run, ctx): what exists before the fault (a first successful
    write); write(run, ctx, capsys): the write that meets the fault -> the error message. `names`: what the
    message must name. `size`: the tmpfs for the read-only and full faults."""
    where: Callable[[Path], Path]
    gone: Callable[[Path], Path] | None
    prepare: Callable[[Path, dict], None]
    write: Callable[[Path, dict, object], str]
    names: Callable[[Path], Path]
    size: str = "8m"
    training: bool = True  # a training run's writer: the message names the newest intact checkpoint


def _logger(cfg=None):
    def prepare(run_dir, ctx):
        Checkpointer(run_dir / "checkpoints").save({"w": torch.zeros(4)}, 8)
        ctx["logger"] = Logger(run_dir, enabled=True, cfg=cfg)
        ctx["logger"].log("train", 1, 0, {"loss": 1.0})
    return prepare


def _log_many(run_dir, ctx, capsys):
    # more than the free slack in the files' last pages: the write must need a new page
    return user_error(lambda: ctx["logger"].log("train", 2, 0, {f"metric{i}": 0.5 for i in range(500)}))


def _samples_prepare(run_dir, ctx):
    _logger(metrics_only())(run_dir, ctx)
    ctx["logger"].log("val", 1, 0, {"fake": Grid(torch.zeros(4, 3, 8, 8))})
    ctx["logger"].jsonl = run_dir.parent / "elsewhere.jsonl"  # samples/ alone meets the fault


def _samples_write(run_dir, ctx, capsys):
    return user_error(lambda: ctx["logger"].log("val", 2, 0, {"fake": Grid(torch.rand(64, 3, 64, 64) * 2 - 1)}))


def _checkpoint_prepare(run_dir, ctx):
    ctx["ckpt"] = Checkpointer(run_dir / "checkpoints")
    ctx["ckpt"].save({"w": torch.zeros(4)}, 8)


def _export(suffix):
    def write(run_dir, ctx, capsys):
        return command_fails(capsys, "--export", str(ctx["trained"]), "--to", str(run_dir / "exports" / f"w{suffix}"))[1]
    return write


def _evaluate_prepare(run_dir, ctx):
    for name in ("checkpoints", "config.yaml"):  # not metrics.jsonl: the row then needs a page of its own
        (shutil.copytree if name == "checkpoints" else shutil.copy)(ctx["trained"] / name, run_dir / name)


def _evaluate_write(run_dir, ctx, capsys):
    out, line = command_fails(capsys, "--evaluate", str(run_dir))
    assert "[eval] step 4 loss" in out  # the figures are printed before the failed append
    assert "the figures above were not recorded" in line
    return line


def _nothing(run_dir, ctx):
    pass


WRITERS = {
    "metrics.jsonl": Writer(lambda r: r, lambda r: r, _logger(metrics_only()), _log_many, lambda r: r / "metrics.jsonl"),
    # TensorBoard's events are written by its own thread: the message names the run directory
    "tensorboard": Writer(lambda r: r / "tb", lambda r: r / "tb", _logger(), _log_many, lambda r: r),
    "samples": Writer(lambda r: r / "samples", lambda r: r, _samples_prepare, _samples_write, lambda r: r),
    "checkpoint": Writer(lambda r: r / "checkpoints", lambda r: r, _checkpoint_prepare,
                         lambda r, ctx, _: user_error(lambda: ctx["ckpt"].save({"w": torch.zeros(1 << 20)}, 12)),
                         lambda r: r / "checkpoints"),
    "export .safetensors": Writer(lambda r: r / "exports", lambda r: r / "exports", _nothing, _export(".safetensors"),
                                  lambda r: r / "exports", training=False),
    "export .pt": Writer(lambda r: r / "exports", lambda r: r / "exports", _nothing, _export(".pt"),
                         lambda r: r / "exports", training=False),
    # missing parent does not apply: the run directory holds the checkpoint being evaluated
    "--evaluate row": Writer(lambda r: r, None, _evaluate_prepare, _evaluate_write, lambda r: r / "metrics.jsonl",
                             size="64m", training=False),
}
CELLS = [(w, f) for w in WRITERS for f in FAULTS if not (f == "missing parent" and WRITERS[w].gone is None)]


@pytest.mark.parametrize("writer, fault", CELLS, ids=[f"{w}-{f}" for w, f in CELLS])
# TensorBoard's writer thread fails too; its traceback must not be printed ahead of the one message
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_every_writer_meets_every_write_fault_with_exit_2_naming_it(writer, fault, trained, tmpfs, tmp_path, capsys):
    w, run_dir = WRITERS[writer], tmp_path / "run"
    ctx = {"trained": trained}
    fs = tmpfs(w.size, w.where(run_dir)) if fault != "missing parent" else None  # makes its mount point
    run_dir.mkdir(exist_ok=True)
    try:
        w.prepare(run_dir, ctx)
        if fault == "read-only":
            fs.remount("ro")
        elif fault == "full":
            fs.fill(leave_bytes=0)
        elif w.gone(run_dir).exists():
            shutil.rmtree(w.gone(run_dir))
        capsys.readouterr()
        message = w.write(run_dir, ctx, capsys)
    finally:
        if "logger" in ctx:
            ctx["logger"].close()  # reports, does not raise: the error above is the one that ends the run
    assert "\n" not in message and str(w.names(run_dir)) in message, message
    expected = FAULTS[fault]
    assert any(e in message.lower() for e in ((expected,) if isinstance(expected, str) else expected)), message
    if w.training and fault != "missing parent":  # (that fault removed the checkpoints with the run directory)
        assert f"The newest intact checkpoint is {run_dir}/checkpoints/step_00000008." in message, message


def test_evaluate_does_not_write_into_a_run_directory_another_process_holds(trained, tmp_path, capsys):
    """A run training in out_dir holds its lock (common/train/rundir.py): --evaluate prints its figures
    and exits 2 without touching the live metrics.jsonl; once the holder is gone the row is recorded."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = (run_dir / "metrics.jsonl").read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from common.train.rundir import lock; "
         f"lock(Path({str(run_dir)!r})); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out, line = command_fails(capsys, "--evaluate", str(run_dir))
    finally:
        holder.communicate("", timeout=60)  # end of stdin: the holder exits, the kernel drops its lock
    assert "[eval] step 4 loss" in out
    assert f"were not recorded in {run_dir}/metrics.jsonl: a run is training there (pid {holder.pid} " in line
    assert "run --evaluate again when it has finished" in line
    assert (run_dir / "metrics.jsonl").read_bytes() == before
    run(MLP.task, MLP.task.script, ["--evaluate", str(run_dir), "device=cpu", "train.progress=false"])
    assert (run_dir / "metrics.jsonl").read_bytes().startswith(before)
    assert b'"split": "eval"' in (run_dir / "metrics.jsonl").read_bytes()[len(before):]
    assert not (run_dir / "run.lock").exists()  # released after the append


@pytest.mark.slow
def test_evaluate_on_two_processes_that_cannot_record_stops_every_rank_with_exit_2(trained, tmpfs, tmp_path):
    """Rank 0 appends; its failure reaches every rank (the same one line, exit 2 on each)."""
    from test_write_failures import stop_on_every_rank
    fs = tmpfs("64m", tmp_path / "run")
    _evaluate_prepare(fs.path, {"trained": trained})
    fs.remount("ro")
    cmd, env = recipe_command("mnist_mlp", "--evaluate", str(fs.path), nproc=2, config=None)
    lines = stop_on_every_rank(cmd, env, 2)
    assert all(f"the figures above were not recorded in {fs.path}/metrics.jsonl" in line and
               "read-only file system" in line.lower() for line in lines), lines


def test_an_evaluate_row_cut_by_a_full_disk_is_taken_back(trained, tmpfs, tmp_path, capsys):
    """The row's first bytes fit in metrics.jsonl's last page and the rest does not: the half row written
    is truncated away, so the file is byte for byte as it was."""
    fs = tmpfs("64m", tmp_path / "run")
    _evaluate_prepare(fs.path, {"trained": trained})
    (fs.path / "run.lock").write_text(" " * 400)  # a dead run's lock file: taking it needs no new page
    rows = (trained / "metrics.jsonl").read_bytes()
    pad = 4096 - 10 - len(rows) - len(b'{"pad": ""}\n')
    before = rows + b'{"pad": "' + b"x" * pad + b'"}\n'  # 10 bytes short of a page
    (fs.path / "metrics.jsonl").write_bytes(before)
    fs.fill(leave_bytes=0)
    out, line = command_fails(capsys, "--evaluate", str(fs.path))
    assert "no space left on device" in line.lower() and "[eval] step 4 loss" in out
    assert (fs.path / "metrics.jsonl").read_bytes() == before
