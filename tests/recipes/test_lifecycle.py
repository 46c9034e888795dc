"""A run's whole life on the console: warnings, start banner, log lines, end summary, rerun of a finished run."""
import re

from support.inprocess import run_inprocess
from support.outputs import metrics


def test_debug_run_prints_banner_and_summary_and_a_rerun_says_complete(tmp_path):
    out_dir = tmp_path / "r"
    first = run_inprocess("mnist_mlp", f"out_dir={out_dir}", "train.grad_accum=2").stdout
    assert "warning:" not in first  # a normal debug run (layered on mnist_mlp.yaml's 200 warmup steps) warns of nothing
    for line in ["run mnist_mlp: fresh", "  parameters    ", "(net ",
                 "  global batch  32 = world 1 x grad_accum 2 x micro-batch 16",
                 "  length        16 steps (train.max_steps; an epoch is 16 steps)",
                 "  data          synthetic (generated): 512 train, 256 eval images 1x28x28, 10 classes",
                 "  device        cpu", "  model         eager (train.compile=false), precision fp32",
                 f"  out_dir       {out_dir}", "  engine        ddp: torch DDP, fp32",
                 "run mnist_mlp finished: step 16 of 16 in ", "  best          val/acc1 ",
                 "  final val     loss ", f"  checkpoints   {out_dir / 'checkpoints'} (newest step_00000016",
                 f"  TensorBoard   tensorboard --logdir {out_dir}"]:
        assert line in first, (line, first)
    assert first.index("run mnist_mlp: fresh") < first.index("[train] step  4/16") < first.index("finished: step 16")
    # Log lines for people: where the run is, then loss and accuracy, then the system metrics with units, once each.
    train = [ln for ln in first.splitlines() if ln.startswith("[train]")]
    assert len(train) == 4, first
    for ln in train:
        assert re.match(r"\[train\] step +\d+/16 epoch \d\.\d\d \| \d:\d\d:\d\d elapsed  ETA \d:\d\d:\d\d \| loss \S+ +acc1 ", ln), ln
        where, _, losses, perf = ln.split(" | ")
        assert "grad_norm " in losses and "img/s" in perf and " ms/step" in perf and " GiB" in perf, ln
        assert "samples_per_s" not in ln and "/device" not in ln and "img/s" not in losses, ln  # one process: one rate
    assert [ln.index(" | ") for ln in train] == [train[0].index(" | ")] * 4  # aligned fields
    # Epochs done, with the fraction of the current one; metrics.jsonl and the checkpoints keep its whole part.
    assert "step  4/16 epoch 0.25 |" in train[0] and "step 16/16 epoch 1.00 |" in train[-1], train
    rows = metrics(out_dir)
    assert [r["epoch"] for r in rows if r["split"] == "train"] == [0, 0, 0, 1]
    assert all(isinstance(r["wall_time"], float) for r in rows)
    assert [r["wall_time"] for r in rows] == sorted(r["wall_time"] for r in rows)

    again = run_inprocess("mnist_mlp", f"out_dir={out_dir}")  # run_inprocess asserts exit code 0
    assert "run mnist_mlp is already complete: step 16 of 16; nothing to train" in again.stdout
    assert f"tensorboard --logdir {out_dir}" in again.stdout and "final val     loss " in again.stdout
    assert "[train]" not in again.stdout and "run mnist_mlp: fresh" not in again.stdout


def test_warnings_print_once_at_the_start_of_a_real_run(tmp_path):
    out = run_inprocess("mnist_mlp", f"out_dir={tmp_path / 'r'}", "train.max_steps=4", "optim.warmup_steps=10",
                     "train.eval_every_steps=8", "train.ckpt_every_steps=0", "train.log_every_steps=2",
                     "data.drop_last=false", "data.synthetic_train=24").stdout
    assert out.count("warning: optim.warmup_steps=10 >= the run's 4 steps") == 1
    assert "warning: train.eval_every_steps=8 is more than the run's 4 steps" in out
    assert "warning: train.batch_size=32 is larger than the training set (24 samples)" in out
    assert out.index("warning:") < out.index("run mnist_mlp: fresh")
