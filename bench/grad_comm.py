"""Gradient communication: DDP's communication time per step vs a raw all_reduce of the same bytes.

Two processes on CPU (gloo), ResNet-18 (43 MB of fp32 gradients in 62 tensors), the recipe's
train_step on 2 images of 16x16 per rank (the same gradient bytes as at any input size, with
little compute around them). DDP runs with its default all-reduce (average over ranks) wrapped
in a comm hook that timestamps each bucket's launch and completion on every rank; DDP's
communication time per step is the time during which at least one bucket was being reduced,
a bucket counting from its launch on the last rank to launch it (before that the collective
waits for a rank still in backward: load imbalance, not communication) to its completion. bench/ddp_worker.py interleaves, step by step:
  ddp        a DDP training step, communication timed by the hook
  ddp_builtin the same step with DDP's built-in all-reduce: checks the timing hook costs nothing
  flat       dist.all_reduce of one fp32 tensor with as many elements as all the gradients
  buckets    all-reduces of DDP's own rebuilt bucket sizes, back to back, no compute
  per_param  one all-reduce per parameter tensor, back to back (what no bucketing would cost)
  local      the same training step on a plain model, no communication
Ratio = median DDP communication time / median flat all_reduce. Target <= 1.3 (bucketing
works). Also printed: buckets / flat, per_param / flat, and the communication time the step
actually pays (DDP step - local step, paired per step) / flat. On a CPU, gloo reduces on the
same cores that run backward, so buckets reduced while backward runs take longer than the
same all-reduce on idle cores; the exposed row shows how much of that the step pays.

    python bench/grad_comm.py [--smoke] [--json out.json]
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

try:
    from bench import harness as H
    from bench import ddp_worker
    from bench.ddp_efficiency import case, per_step_max
except ImportError:
    import harness as H
    import ddp_worker
    from ddp_efficiency import case, per_step_max

ARMS = ["ddp", "ddp_builtin", "flat", "buckets", "per_param", "local"]


def run(args) -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_comm_") as tmp:
        tmp = Path(tmp)
        if args.smoke:
            c = case("resnet18", "resnet_cifar", [3, 16, 16], 4, 1, 2, tmp, ["model.arch=resnet18", "model.width_mult=0.0625"])
            c["comm_hook"] = True
        else:
            c = case("resnet18", "resnet_cifar", [3, 16, 16], 4, 3, 30, tmp, ["model.arch=resnet18"])
            c["comm_hook"] = True
        results = ddp_worker.launch(2, [c], ARMS, 0, args.threads, tmp / "w2")
    per_rank = [r["cases"]["resnet18"] for r in results]
    info = per_rank[0]
    t = {a: per_step_max(per_rank, a) for a in ARMS}
    t["ddp_comm"] = ddp_worker.comm_time([r["comm"] for r in per_rank])
    ratio = H.median(t["ddp_comm"]) / H.median(t["flat"])
    details = {
        "ddp_comm_ms_per_step": 1e3 * H.median(t["ddp_comm"]), "flat_allreduce_ms": 1e3 * H.median(t["flat"]),
        "paired_ratios": H.paired_ratios(t["ddp_comm"], t["flat"]),
        "ddp_step_ms": 1e3 * H.median(t["ddp"]),
        "timed_hook_step_vs_builtin_step": H.median(H.paired_ratios(t["ddp"], t["ddp_builtin"])),
        "grad_MB": info["grad_bytes"] / 2**20, "n_params": info["n_params"],
        "ddp_bucket_MB": [round(x / 2**20, 2) for x in info["bucket_bytes"]],
        "flat_GB_per_s_algbw": info["grad_bytes"] / H.median(t["flat"]) / 1e9,
        "setup": f"resnet18, 2 procs x {args.threads} thread, gloo, {info['per_rank_batch']} images of 16x16 per rank, "
                 f"{len(t['flat'])} interleaved steps",
    }
    rows = [H.row("grad_comm/ddp_comm_vs_flat_allreduce", ratio, "<=", 1.3, details)]
    buckets = H.paired_ratios(t["buckets"], t["flat"])
    per_param = H.paired_ratios(t["per_param"], t["flat"])
    rows.append(H.row("grad_comm/ddp_buckets_vs_flat (no compute)", H.median(buckets), "", None, {
        "buckets_ms": 1e3 * H.median(t["buckets"]), "n_buckets": len(info["bucket_bytes"])}))
    rows.append(H.row("grad_comm/per_param_vs_flat (no bucketing)", H.median(per_param), "", None, {
        "per_param_ms": 1e3 * H.median(t["per_param"]), "n_tensors": info["n_params"]}))
    exposed = [d - l for d, l in zip(t["ddp"], t["local"])]
    rows.append(H.row("grad_comm/ddp_exposed_comm_vs_flat (info)", H.median(exposed) / H.median(t["flat"]), "", None, {
        "unit": "difference",  # near 0 when DDP overlaps its comm with backward; noise can make it negative
        "exposed_ms_per_step": 1e3 * H.median(exposed), "local_step_ms": 1e3 * H.median(t["local"]),
        "how": "per step: DDP step time - plain-model step time (slower rank each), median, / flat all_reduce"}))
    return H.report("grad_comm", rows, {"threads_per_process": args.threads, "backend": "gloo", "device": "cpu",
                                        "smoke": args.smoke}, t0)


def main(argv=None):
    return H.cli_main(__doc__, run, argv)


if __name__ == "__main__":
    torch.multiprocessing.freeze_support()
    main()
