"""What a run shows about itself: the profiler trace of every rank, the per-step metrics (step time,
throughput per device, peak memory, gradient norm) and the TensorBoard layout (train and val runs
with the same tags, hparams without scalar points of their own, parameter counts)."""
import json
import math
import re

import pytest
import torch

from support.inprocess import run_inprocess
from support.runs import run_recipe
from support.outputs import metrics

# dropout off: one process and two ranks then compute the same gradients (tests/dist/test_ddp_equivalence.py)
COMMON = ["model.dropout=0", "train.max_steps=8", "train.log_every_steps=2", "data.synthetic_test=64"]
PROFILED = (3, 2)  # train.profile_start, train.profile_steps


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("obs")
    run_inprocess("mnist_mlp", f"out_dir={tmp / 'one'}", *COMMON)
    two = run_recipe("mnist_mlp", f"out_dir={tmp / 'two'}", *COMMON, "train.grad_accum=2",
                     f"train.profile_start={PROFILED[0]}", f"train.profile_steps={PROFILED[1]}", nproc=2)
    (tmp / "two.stderr").write_text(two.stderr)
    (tmp / "two.stdout").write_text(two.stdout)
    return tmp / "one", tmp / "two"


def test_every_rank_writes_a_trace_of_the_profiled_steps(runs):
    traces = sorted((runs[1] / "profile").glob("*.pt.trace.json"))
    assert [p.name.split(".")[0] for p in traces] == ["rank0", "rank1"], traces
    for path in traces:
        events = json.loads(path.read_text())["traceEvents"]
        names = {e.get("name", "") for e in events}
        start, n = PROFILED
        assert {f"ProfilerStep#{i}" for i in range(start, start + n)} <= names, sorted(n for n in names if "Step" in n)
        assert f"ProfilerStep#{start + n}" not in names and f"ProfilerStep#{start - 1}" not in names
        # the model's forward and backward, the optimizer, and the gradient all-reduce are in the window
        assert "aten::addmm" in names and "autograd::engine::evaluate_function: AddmmBackward0" in names, path
        assert any("Optimizer.step" in x for x in names) and any("allreduce" in x.lower() for x in names), path
        assert any(e.get("name") == "[memory]" for e in events), "no memory events (profile_memory)"


def test_the_profiler_on_a_cpu_prints_no_gpu_errors(runs):
    err = (runs[1].parent / "two.stderr").read_text()
    assert "gpuGetDeviceCount" not in err and "ERROR:" not in err, err[-3000:]


def test_a_two_process_log_shows_progress_once_with_a_rate_per_device(runs):
    """What a SLURM log holds (no terminal: no bar): rank 0's lines, each with step/total and the ETA."""
    lines = [ln for ln in (runs[1].parent / "two.stdout").read_text().splitlines() if ln.startswith("[train]")]
    assert len(lines) == 4, lines
    for ln in lines:
        assert re.match(r"\[train\] step \d/8 epoch +\d+\.\d\d \| \d:\d\d:\d\d elapsed  ETA \d:\d\d:\d\d \| loss ", ln), ln
        assert re.search(r"\d img/s \([\d,]+/device\)", ln) and "it/s" not in ln, ln


def test_train_metrics_hold_step_time_throughput_memory_and_grad_norm(runs):
    for out, world in zip(runs, (1, 2)):
        train = [m for m in metrics(out) if m["split"] == "train"]
        assert [m["step"] for m in train] == [2, 4, 6, 8]
        for m in train:
            for key in ("step_time_s", "samples_per_s", "samples_per_s_per_device", "peak_rss_gib", "grad_norm"):
                assert math.isfinite(m[key]) and m[key] > 0, (key, m)
            assert m["samples_per_s_per_device"] == pytest.approx(m["samples_per_s"] / world)
            assert m["peak_rss_gib"] < 64, m  # GiB, not KiB read as bytes


def test_grad_norm_is_the_global_norm_with_ddp_and_accumulation(runs):
    """Two ranks x two micro-batches and one process with the whole batch train the same weights,
    so the logged norm of the averaged gradient must agree at every log step."""
    one, two = ([m["grad_norm"] for m in metrics(out) if m["split"] == "train"] for out in runs)
    assert two == pytest.approx(one, rel=1e-4)


def test_grad_norm_recorded_by_the_engine_equals_the_recomputed_norm():
    """On a tiny model: the engine's norm (log step, no clipping; and clipping) against torch's own."""
    from common.engines.base import Engine, total_norm
    from types import SimpleNamespace as NS

    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    for clip in (0.0, 0.01):
        cfg = NS(precision="fp32", train=NS(clip_grad_norm=clip), ckpt=NS(async_save=False))
        rt = Engine(cfg, NS(device=torch.device("cpu")))
        model = torch.nn.Linear(5, 3)
        ref = torch.nn.Linear(5, 3)
        ref.load_state_dict(model.state_dict())
        torch.nn.functional.mse_loss(ref(x), y).backward()
        want = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ref.parameters()]))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        rt.want_grad_norm = True
        for i in range(2):  # two micro-batches: the mean gradient of the whole batch
            with rt.micro_step(i, 2):
                rt.backward(torch.nn.functional.mse_loss(model(x[8 * i:8 * i + 8]), y[8 * i:8 * i + 8]))
                rt.step(opt)
        assert float(rt.grad_norm(opt)) == pytest.approx(float(want), rel=1e-5)
        assert rt.grad_norm(opt) is None  # read once per log step
    rt.want_grad_norm, rt.cfg.train.clip_grad_norm = False, 0.0  # without clipping, off the log steps: none
    with rt.micro_step(0, 1):
        rt.backward(torch.nn.functional.mse_loss(model(x), y))
        rt.step(opt)
    assert rt.grad_norm(opt) is None
    assert float(total_norm([])) == 0.0


def test_tensorboard_train_and_val_share_tags_and_hparams_add_no_scalars(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = runs[0] / "tb"
    event_dirs = {p.parent.relative_to(tb).as_posix() for p in tb.rglob("events.out.tfevents.*")}
    assert event_dirs == {"train", "val"}, event_dirs  # no hparams run of its own
    train, val = (EventAccumulator(str(tb / split)).Reload() for split in ("train", "val"))
    rows = metrics(runs[0])
    for acc, split in ((train, "train"), (val, "val")):
        logged = [r for r in rows if r["split"] == split]
        for key in ("loss", "acc1", "lr") if split == "train" else ("loss", "acc1"):
            assert [e.step for e in acc.Scalars(key)] == [r["step"] for r in logged], (split, key)
            assert [e.value for e in acc.Scalars(key)] == pytest.approx([r[key] for r in logged])
    # system metrics are a group of their own, apart from loss and accuracy
    assert {"perf/samples_per_s", "perf/step_time_s", "perf/peak_rss_gib"} <= set(train.Tags()["scalars"])
    assert not {"samples_per_s", "step_time_s"} & set(train.Tags()["scalars"])
    # every scalar point of the val run is a logged val value: hparams wrote none at step 0
    assert min(e.step for tag in val.Tags()["scalars"] for e in val.Scalars(tag)) > 0
    assert "_hparams_/session_start_info" in val.PluginTagToContent("hparams")
    text = train.Tensors("model/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| net | " in text and "parameters" in text, text
