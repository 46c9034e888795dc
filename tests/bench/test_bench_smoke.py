"""The benchmarks run and report well-formed results (bench/run_all.py --smoke).

Smoke sizes are tiny and the machine is shared: nothing here looks at how fast anything
was or whether a target was met. The real numbers come from `python -m bench` (README).
"""
import json
import math
import os
import subprocess
import sys

from support.runs import ROOT

EXPECTED = {
    "loop_overhead": ["loop_overhead/mnist_mlp_b128", "loop_overhead/resnet18_b32"],
    "loader_headroom": [f"loader_headroom/{r}" for r in ("mnist_mlp", "mnist_cnn", "lenet_cifar", "resnet_cifar",
                                                           "senet_cifar", "vgg_cifar", "gan_mnist", "cgan_mnist",
                                                           "dcgan", "pix2pix", "imagenet")],
    "loader_cost": [f"loader_cost/{s}" for s in ("aug_off", "ta_wide_erase", "ta_wide_erase_mixup_cutmix")],
    "jpeg_cost": [f"jpeg_cost/{t} {r}" for t in ("500x375", "mixed")
                  for r in ("fast / torchvision", "fast / torchvision_uint8", "pil / torchvision")],
    "ddp_efficiency": ["ddp_efficiency/resnet18_2proc", "ddp_efficiency/mnist_cnn_2proc",
                       "ddp_efficiency/resnet18_world1_cost", "ddp_efficiency/mnist_cnn_world1_cost",
                       "ddp_efficiency/mnist_cnn_explicit_ddp_world1 (info)"],
    "grad_comm": ["grad_comm/ddp_comm_vs_flat_allreduce", "grad_comm/ddp_exposed_comm_vs_flat (info)"],
    "gpu": ["gpu/ours_vs_bare_images_per_s", "gpu/compile_vs_eager", "gpu/bf16_vs_fp32", "gpu/data_wait_pct",
            "gpu/host_syncs_per_step (fp16)", "gpu/host_syncs_per_step (bf16 + ema_decay=0.999)",
            "gpu/jpeg_gpu_vs_pil_images_per_s", "gpu/jpeg_data_wait_pct (data.decode=pil)",
            "gpu/jpeg_data_wait_pct (data.decode=gpu)"],
}


def test_smoke_run_is_well_formed(tmp_path):
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["failed"] == [] and result["problems"] == []
    reports = {r["benchmark"]: r for r in result["reports"]}
    assert set(reports) == set(EXPECTED)
    for bench, names in EXPECTED.items():
        rows = {r["name"]: r for r in reports[bench]["rows"]}
        assert set(names) <= set(rows), (bench, sorted(rows))
        for row in rows.values():
            assert set(row) == {"name", "ratio", "target", "met", "status", "details"}
            assert row["target"] == "(info)" or row["target"].split()[0] in ("<=", ">=")
            if row["status"] == "measured":
                # Form, not speed: a ratio of two timings is positive by construction, a count or a percentage
                # is >= 0, and a difference of two timings may have either sign (noise on a loaded machine).
                unit = row["details"].get("unit", "ratio")
                assert isinstance(row["ratio"], float) and math.isfinite(row["ratio"]), row
                assert unit in ("ratio", "count", "percent", "difference"), row
                if unit == "ratio":
                    assert row["ratio"] > 0, row
                elif unit in ("count", "percent"):
                    assert row["ratio"] >= 0, row
                assert row["met"] in (True, False, None)
            else:
                assert row["ratio"] is None and row["met"] is None
    # the loss curves of our loop and the bare loop are compared, and the comparison is reported
    for name in EXPECTED["loop_overhead"]:
        details = {r["name"]: r for r in reports["loop_overhead"]["rows"]}[name]["details"]
        assert math.isfinite(details["loss_max_abs_diff_ours_vs_bare"])
    # the printed table has a line per row
    for names in EXPECTED.values():
        for name in names:
            assert f"| {name} |" in proc.stdout


def test_gpu_benchmark_code_path_runs_on_cpu(tmp_path):
    """bench/gpu.py's measuring code (fit vs bare loop, loader timing, bf16 vs fp32) on the CPU at smoke
    sizes: catches a broken script before a GPU session finds it. Its numbers mean nothing here."""
    out = tmp_path / "gpu.json"
    # batch 32: the code path is the same as at the GPU's 512, and bf16 on a CPU is slow
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--allow-cpu", "--batch", "32", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    for name in ("gpu/ours_vs_bare_images_per_s", "gpu/bf16_vs_fp32"):
        assert rows[name]["status"] == "measured" and rows[name]["ratio"] > 0, rows[name]
    wait = rows["gpu/data_wait_pct"]  # a share of wall time: 0 is a possible reading
    assert wait["status"] == "measured" and math.isfinite(wait["ratio"]) and wait["ratio"] >= 0, wait
    details = rows["gpu/ours_vs_bare_images_per_s"]["details"]
    assert details["loss_max_abs_diff_ours_vs_bare"] == 0.0  # same batches, same seed, CPU: identical losses
    # data.decode=pil vs gpu through imagenet's fit() (gpu_decode's device half on the CPU here)
    for decode in ("pil", "gpu"):
        assert rows[f"gpu/jpeg_images_per_s (data.decode={decode})"]["status"] == "measured"
        wait = rows[f"gpu/jpeg_data_wait_pct (data.decode={decode})"]
        assert wait["status"] == "measured" and math.isfinite(wait["ratio"]) and wait["ratio"] >= 0, wait
    assert rows["gpu/jpeg_gpu_vs_pil_images_per_s"]["ratio"] > 0


def test_form_check_allows_a_negative_difference_but_not_a_negative_ratio():
    """run_all.check judges a row by what its number is (details["unit"]), never by how fast anything ran."""
    from bench import harness as H
    from bench.run_all import check

    def report(*rows):
        return {"benchmark": "b", "rows": list(rows), "settings": {}, "seconds": 0.0}

    assert check(report(H.row("b/diff (info)", -0.149, "", None, {"unit": "difference"}))) == []
    assert check(report(H.row("b/syncs", 0.0, "<=", 0, {"unit": "count"}))) == []
    assert check(report(H.row("b/wait", 0.0, "<=", 1.0, {"unit": "percent"}))) == []
    assert check(report(H.row("b/ratio", -0.149, "", None)))  # one timing over another cannot be negative
    assert check(report(H.row("b/ratio", 0.0, "<=", 1.3)))
    assert check(report(H.row("b/ratio", float("nan"), "<=", 1.3)))
    assert check(report(H.row("b/odd", 1.0, "", None, {"unit": "furlongs"})))
