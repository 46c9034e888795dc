"""GPU benchmark: ResNet-18 on CIFAR-shaped data, bf16 + channels_last + the in-memory GPU loader, batch 512;
and ResNet-50 fed by JPEGs decoded on the CPU workers vs on the GPU.

Prints "not measured" (and writes that to --out) when no CUDA device is visible. Otherwise,
with the recipe's own pieces (resnet_cifar's task: Config, build_data = classification_data on
50,000 synthetic 3x32x32 images held on the GPU with on-device crop+flip, build_state, train_step;
common.train.loop.fit):
  1. ours vs bare: our fit() vs a hand-written loop on the same model/batches/seed, bf16 +
     channels_last, eager; blocks alternate A B / B A; images/s ratio (target >= 0.95), loss curves.
  2. absolute images/s and MFU: 3.33 GFLOP per training image (forward + backward of the 32x32
     ResNet-18) against the GPU's dense bf16 peak (H100 SXM / H200: 989 TFLOP/s, H100 PCIe: 756,
     A100: 312; anything else: assumed 989 unless --peak-tflops, and said so).
  3. torch.compile (train.compile=true) vs eager, both ours: target >= 1.2x.
  4. bf16 vs fp32 (ours, eager; fp32 runs with TF32 matmuls/convolutions, common/env.py's CUDA default): target >= 2x.
  5. data wait: the loop's own data_wait_pct (host time blocked in next(loader) / wall time,
     from metrics.jsonl, steps after the first log interval): target < 1%; also the loader's
     GPU time per batch (loader alone, synchronized) as a share of the step time.
  6. host-device synchronizations per step inside fit() (torch.cuda.set_sync_debug_mode), for
     bf16, fp16 (GradScaler with the fused optimizer) and bf16 + EMA (common/train/state.py's EMA):
     target 0 for each.
  7. JPEG decoding feeding ResNet-50 (imagenet's task, bf16, channels_last, batch --decode-batch, 224 px crops)
     on generated ImageNet-like JPEGs (500x375, quality 90): images/s and fit()'s data_wait_pct for
     data.decode=pil (the CPU workers decode) and data.decode=gpu (the workers read headers, nvJPEG decodes),
     both with --decode-workers workers; one fit() block per arm, the arms alternating.
Timing: each block is one fit() (or bare-loop) run of `warmup + timed + 1` steps; the clock
reads at the start of step `warmup` and of the last step, each after torch.cuda.synchronize().
fit()'s end-of-run evaluation and checkpoint lie outside that window.

    python bench/gpu.py --out gpu_results.json          # minutes on one GPU (--budget-s caps them)
    python bench/gpu.py --smoke --out smoke.json        # tiny sizes, no compile, seconds
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    from bench import harness as H
    from bench.loader_headroom import _memoize_synthetic, make_jpeg_tree
    from bench.loop_overhead import bare_setup, epochs
except ImportError:
    import harness as H
    from loader_headroom import _memoize_synthetic, make_jpeg_tree
    from loop_overhead import bare_setup, epochs

from common.train.runtime import runtime
from common.train.log import read_metrics
from common.train.loop import fit

RECIPE = "resnet_cifar"
GFLOP_PER_IMAGE = 3.33  # training (fwd + bwd = 3 x fwd) FLOPs of the CIFAR ResNet-18 per 32x32 image
PEAKS = [("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
         ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0)]


def peak_tflops(name: str, override: float | None) -> tuple[float, str]:
    if override:
        return override, f"{override:g} TFLOP/s dense bf16 (from --peak-tflops)"
    for key, value in PEAKS:
        if key.lower() in name.lower():
            return value, f"{value:g} TFLOP/s dense bf16 ({key}, detected from the device name '{name}')"
    return 989.0, (f"ASSUMED 989 TFLOP/s dense bf16 (H100 SXM): '{name}' is not in the table; "
                   "pass --peak-tflops for this GPU")


class Bench:
    """One precision/compile setting: its engine (common.train.runtime.runtime) and loaders, and block runners
    for ours and bare."""

    def __init__(self, mod, tmp: Path, name: str, overrides: list[str], warmup: int, timed: int):
        self.mod, self.tmp, self.name = mod, tmp, name
        self.warmup, self.steps = warmup, warmup + timed + 1
        self.cfg = H.recipe_config(mod, overrides + [f"train.max_steps={self.steps}", f"out_dir={tmp / name}"])
        self._stack = contextlib.ExitStack()  # the runtime stays up across blocks until close()
        with H.quiet():
            self.rt = self._stack.enter_context(runtime(self.cfg))
        self.loaders = mod.task.build_data(self.cfg, self.rt)
        self.blocks = 0
        self.state = None  # kept across blocks when reuse_state (compiled models: compile once)
        self.data_wait: list[float] = []
        self.compile_s = None

    def _stamp(self, stamps: list[float]) -> None:
        if len(stamps) in (self.warmup, self.steps - 1):
            H.sync(self.rt.device)
        stamps.append(time.perf_counter())

    def ours(self, reuse_state: bool = False, on_step=None) -> tuple[float, torch.Tensor]:
        mod, cfg, rt = self.mod, self.cfg, self.rt
        self.blocks += 1
        cfg.out_dir = str(self.tmp / f"{self.name}_{self.blocks}")
        if reuse_state and self.state is not None:
            state = self.state
            state.step, state.epoch, state.batch_in_epoch, state.best = 0, 0, 0, None
        else:
            state = mod.task.build_state(cfg, rt, self.loaders)
            if reuse_state:
                self.state = state
        torch.manual_seed(cfg.seed + 1)
        stamps, losses = [], []

        def timed_step(cfg, batch, state, rt):
            if on_step and len(stamps) == self.steps - 1:
                on_step("end")
            self._stamp(stamps)
            if on_step and len(stamps) == self.warmup + 1:
                on_step("start")
            out = mod.task.train_step(cfg, batch, state, rt)
            losses.append(out["loss"])
            return out

        t0 = time.perf_counter()
        with H.quiet():
            fit(cfg, state, rt, self.loaders, timed_step, mod.task.evaluate, RECIPE)
        if self.compile_s is None and cfg.train.compile:
            self.compile_s = stamps[1] - t0  # the first step compiles forward and backward
        rows = read_metrics(cfg.out_dir)
        first_log = cfg.train.log_every_steps
        self.data_wait += [r["data_wait_pct"] for r in rows if r["split"] == "train" and r["step"] > first_log]
        shutil.rmtree(cfg.out_dir, ignore_errors=True)
        assert len(stamps) == self.steps, (len(stamps), self.steps)
        return (stamps[-1] - stamps[self.warmup]) / (self.steps - 1 - self.warmup), torch.stack(losses).float().cpu()

    def bare(self) -> tuple[float, torch.Tensor]:
        cfg, rt = self.cfg, self.rt
        model, opt, sched = bare_setup(self.mod, cfg, rt, self.loaders, self.steps)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        torch.manual_seed(cfg.seed + 1)
        stamps, losses = [], []
        model.train()
        for _, micro in zip(range(self.steps), epochs(copy.copy(self.loaders.train))):
            self._stamp(stamps)
            x, y = micro[0]
            with torch.autocast(rt.device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            losses.append(loss.detach())
        assert len(stamps) == self.steps, (len(stamps), self.steps)
        return (stamps[-1] - stamps[self.warmup]) / (self.steps - 1 - self.warmup), torch.stack(losses).float().cpu()

    def loader_time(self, batches: int) -> float:
        """Seconds of GPU time to build one training batch (loader alone, synchronized)."""
        it = epochs(copy.copy(self.loaders.train))
        next(it)
        H.sync(self.rt.device)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        H.sync(self.rt.device)
        return (time.perf_counter() - t0) / batches

    def close(self) -> None:
        self._stack.close()


def count_syncs(mod, tmp: Path, base: list[str], name: str, extra: list[str], warmup: int, timed: int) -> float:
    """Host-device synchronizations per step inside fit(), counted by torch.cuda.set_sync_debug_mode('warn')
    between the start of step `warmup` and the start of the last step (no log, eval or checkpoint in between)."""
    import warnings
    b = Bench(mod, tmp, name, base + extra + ["train.log_every_steps=100000"], warmup, timed)

    def toggle(where):
        torch.cuda.set_sync_debug_mode("warn" if where == "start" else "default")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            b.ours(on_step=toggle)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    b.close()
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs) / (b.steps - 1 - b.warmup)


DECODES = ("pil", "gpu")


def jpeg_tree(root: Path, n_train: int, n_val: int, size: tuple[int, int], distinct: int) -> Path:
    """`distinct` generated JPEGs copied under more names up to n_train: the decoding cost per image is a real
    JPEG's, and the tree is written in seconds."""
    make_jpeg_tree(root, distinct, n_val, size=size)
    made = sorted((root / "train").rglob("*.jpg"))
    for i in range(distinct, n_train):
        src = made[i % distinct]
        shutil.copyfile(src, src.parent / f"{i:05d}.jpg")
    return root


def decode_rows(args, device: str, tmp: Path, over_budget) -> list[dict]:
    """7: data.decode=pil vs data.decode=gpu feeding ResNet-50 (on the CPU: a code-path check, ResNet-18 at 32 px)."""
    if over_budget("JPEG decoding (pil vs gpu)"):
        return [H.row(n, None, op, t, {}, status="skipped (time budget)") for n, op, t in decode_names()]
    smoke = args.smoke
    batch, workers = (8, 0) if smoke else (args.decode_batch, args.decode_workers)
    warmup, timed = (2, 3) if smoke else (10, 40)
    size, crop, model = ((64, 48), 32, "resnet18") if smoke else ((500, 375), 224, "resnet50")
    root = jpeg_tree(tmp / "jpeg", 16 * batch, batch, size, distinct=min(16 * batch, 256))
    base = [f"device={device}", "data.name=imagefolder", f"data.root={root}", f"data.image_size={crop}",
            f"data.workers={workers}", f"model.name={model}", "precision=bf16", "train.channels_last=true",
            f"train.batch_size={batch}", f"train.eval_batch_size={batch}", "train.eval_every_steps=1000000",
            "train.ckpt_every_steps=1000000", f"train.log_every_steps={2 if smoke else 10}", "train.progress=false",
            "resume=none"]
    mod = H.load_recipe("imagenet")
    arms = {d: Bench(mod, tmp, f"decode_{d}", base + [f"data.decode={d}"], warmup, timed) for d in DECODES}
    for b in arms.values() if not smoke else ():
        b.ours()  # untimed warm-up block: workers started, cuDNN autotuned, files in the page cache
        b.data_wait.clear()
    times = H.alternate({d: (lambda b=b: b.ours()[0]) for d, b in arms.items()}, 1 if smoke else 2)
    ips = {d: batch / H.median(times[d]) for d in DECODES}
    ratios = H.paired_ratios(times["pil"], times["gpu"])  # images/s gpu / pil = t_pil / t_gpu
    print("  JPEG decoding: " + ", ".join(f"data.decode={d} {ips[d]:,.0f} images/s" for d in DECODES), flush=True)
    setup = (f"{model}, bf16, channels_last, batch {batch}, {crop} px crops of {size[0]}x{size[1]} JPEGs, "
             f"data.workers={workers}, {timed} timed steps per block")
    rows = [H.row(f"gpu/jpeg_images_per_s (data.decode={d})", ips[d], "", None, {"setup": setup}) for d in DECODES]
    rows.append(H.row("gpu/jpeg_gpu_vs_pil_images_per_s", H.median(ratios), "", None, {"paired_ratios": ratios}))
    for d, b in arms.items():
        wait = H.median(b.data_wait) if b.data_wait else None
        rows.append(H.row(f"gpu/jpeg_data_wait_pct (data.decode={d})", wait, "<=", 1.0, {"unit": "percent",
                          "values": b.data_wait}, status="measured" if wait is not None else "not measured (no log "
                          "interval after the first)"))
        b.close()
    return rows


def decode_names() -> list[tuple[str, str, float | None]]:
    return ([(f"gpu/jpeg_images_per_s (data.decode={d})", "", None) for d in DECODES]
            + [("gpu/jpeg_gpu_vs_pil_images_per_s", "", None)]
            + [(f"gpu/jpeg_data_wait_pct (data.decode={d})", "<=", 1.0) for d in DECODES])


def not_measured(reason: str) -> list[dict]:
    names = [("gpu/ours_vs_bare_images_per_s", ">=", 0.95), ("gpu/images_per_s (ours, bf16, eager)", "", None),
             ("gpu/mfu (ours, bf16, eager)", "", None), ("gpu/compile_vs_eager", ">=", 1.2),
             ("gpu/bf16_vs_fp32", ">=", 2.0), ("gpu/data_wait_pct", "<=", 1.0),
             ("gpu/host_syncs_per_step (bf16)", "<=", 0), ("gpu/host_syncs_per_step (fp16)", "<=", 0),
             ("gpu/host_syncs_per_step (bf16 + ema_decay=0.999)", "<=", 0), *decode_names()]
    return [H.row(n, None, op, t, {"reason": reason}, status="not measured") for n, op, t in names]


def run(args) -> dict:
    t_start = time.perf_counter()
    settings = {"smoke": args.smoke, "batch": args.batch, "command": "python bench/gpu.py " + " ".join(args.argv)}
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("GPU benchmark: not measured (torch.cuda.is_available() is False on this machine)", flush=True)
        return H.report("gpu", not_measured("no CUDA device"), settings, t_start)
    H.single_process_env()
    _memoize_synthetic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (--allow-cpu code-path check)"
    peak, peak_note = peak_tflops(name, args.peak_tflops)
    settings.update(device=name, peak_bf16_tflops=peak, peak_note=peak_note, torch=torch.__version__,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if device == "cuda" else None)
    print(f"GPU benchmark on {name}; peak: {peak_note}", flush=True)
    smoke = args.smoke
    batch = args.batch
    n_train = 8 * batch if smoke else 50_000
    warmup, timed = (2, 3) if smoke else (args.warmup, args.timed)
    pairs = 1 if smoke else args.pairs
    base = [f"device={device}", "model.arch=resnet18", "data.name=synthetic", "data.synthetic_shape=[3,32,32]",
            f"data.synthetic_train={n_train}", f"data.synthetic_test={2 * batch if smoke else 2000}",
            "data.synthetic_classes=10", f"train.batch_size={batch}", "train.channels_last=true",
            # evaluation and checkpoint once, at the end of each run (outside the timed window)
            "train.eval_every_steps=1000000", "train.ckpt_every_steps=1000000",
            "train.progress=false", "resume=none"]
    if smoke:
        base += ["model.width_mult=0.25", "train.log_every_steps=2"]
    mod = H.load_recipe(RECIPE)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        tmp = Path(tmp)

        def over_budget(what: str) -> bool:
            left = args.budget_s - (time.perf_counter() - t_start)
            if left < 0:
                print(f"  skipping {what}: the {args.budget_s:.0f} s budget is spent", flush=True)
                return True
            return False

        # 1 + 2: ours vs bare, bf16 eager
        bf16 = Bench(mod, tmp, "bf16", base + ["precision=bf16"], warmup, timed)
        curves = {"ours": [], "bare": []}

        def arm(kind):
            def go():
                t, losses = getattr(bf16, kind)()
                curves[kind].append(losses)
                print(f"  bf16 eager {kind}: {batch / t:,.0f} images/s", flush=True)
                return t
            return go
        bf16.ours()  # untimed warm-up block: cuDNN autotuning (benchmark mode), allocator growth
        bf16.data_wait.clear()
        times = H.alternate({"ours": arm("ours"), "bare": arm("bare")}, pairs)
        ratios = H.paired_ratios(times["bare"], times["ours"])  # images/s ours / bare = t_bare / t_ours
        ours_ips = batch / H.median(times["ours"])
        diff = max(float((o - b).abs().max()) for o, b in zip(curves["ours"], curves["bare"]))
        floor = max([float((b - curves["bare"][0]).abs().max()) for b in curves["bare"][1:]] or [0.0])
        rows.append(H.row("gpu/ours_vs_bare_images_per_s", H.median(ratios), ">=", 0.95, {
            "ours_images_per_s": ours_ips, "bare_images_per_s": batch / H.median(times["bare"]),
            "paired_ratios": ratios, "loss_max_abs_diff_ours_vs_bare": diff,
            "loss_max_abs_diff_bare_vs_bare_rerun (nondeterminism floor)": floor,
            "loss_first_last": [float(curves["bare"][0][0]), float(curves["bare"][0][-1])],
            "setup": f"bf16 autocast, channels_last, eager, batch {batch}, {pairs} A/B pairs x {timed} timed steps"}))
        rows.append(H.row("gpu/images_per_s (ours, bf16, eager)", ours_ips, "", None, {"batch": batch}))
        mfu = ours_ips * GFLOP_PER_IMAGE * 1e9 / (peak * 1e12)
        rows.append(H.row("gpu/mfu (ours, bf16, eager)", mfu, "", None, {
            "gflop_per_image": GFLOP_PER_IMAGE, "peak": peak_note}))

        # 5: data wait (fit's own metric) and the loader's GPU time per batch
        step_s = H.median(times["ours"])
        loader_s = bf16.loader_time(5 if smoke else 50)
        wait = H.median(bf16.data_wait) if bf16.data_wait else None
        rows.append(H.row("gpu/data_wait_pct", wait, "<=", 1.0, {"unit": "percent",
            "source": "fit()'s data_wait_pct: host time blocked in next(loader) / wall time, per log interval",
            "values": bf16.data_wait,
            "loader_gpu_ms_per_batch": 1e3 * loader_s, "step_ms": 1e3 * step_s,
            "loader_gpu_share_of_step_pct (info)": 100 * loader_s / step_s,
            "loader_headroom (loader images/s / step images/s)": step_s / loader_s}, status="measured"
            if wait is not None else "not measured (no log interval after the first; use more --timed steps)"))

        # fast path: no host-device synchronization per step (the loop's design), counted
        if device != "cuda":
            rows.append(H.row("gpu/host_syncs_per_step (bf16)", None, "<=", 0, {"unit": "count"},
                              status="not measured (no CUDA)"))
        else:
            for label, extra in (("bf16", ["precision=bf16"]), ("fp16", ["precision=fp16"]),
                                 ("bf16 + ema_decay=0.999", ["precision=bf16", "train.ema_decay=0.999"])):
                try:
                    n = count_syncs(mod, tmp, base, "syncs", extra, 3, 5 if smoke else 20)
                    rows.append(H.row(f"gpu/host_syncs_per_step ({label})", n, "<=", 0, {
                                          "unit": "count", "how": "torch.cuda.set_sync_debug_mode('warn') inside "
                                          "fit() between two log steps"}))
                except Exception as e:
                    traceback.print_exc()
                    rows.append(H.row(f"gpu/host_syncs_per_step ({label})", None, "", None,
                                      {"unit": "count", "error": f"{type(e).__name__}: {e}"[:500]}, status="failed"))
            print("  host syncs per step: " + ", ".join(f"{r['name'].split('(')[1][:-1]}: {r['ratio']}"
                                                      for r in rows if "host_syncs" in r["name"]), flush=True)

        # 7: JPEG decoding on the CPU workers vs on the GPU, feeding ResNet-50
        try:
            rows += decode_rows(args, device, tmp, over_budget)
        except Exception as e:
            traceback.print_exc()
            rows += [H.row(n, None, "", None, {"error": f"{type(e).__name__}: {e}"[:500]}, status="failed")
                     for n, _, _ in decode_names()]

        # 4: bf16 vs fp32 (TF32), ours eager
        if over_budget("bf16 vs fp32"):
            rows.append(H.row("gpu/bf16_vs_fp32", None, ">=", 2.0, {}, status="skipped (time budget)"))
        else:
            fp32 = Bench(mod, tmp, "fp32", base + ["precision=fp32"], warmup, timed)
            fp32.ours()  # untimed warm-up block (TF32 kernels are autotuned separately)
            t = H.alternate({"bf16": lambda: bf16.ours()[0], "fp32": lambda: fp32.ours()[0]}, max(1, pairs - 1))
            r = H.paired_ratios(t["fp32"], t["bf16"])
            print(f"  fp32 (TF32) eager ours: {batch / H.median(t['fp32']):,.0f} images/s", flush=True)
            rows.append(H.row("gpu/bf16_vs_fp32", H.median(r), ">=", 2.0, {
                "bf16_images_per_s": batch / H.median(t["bf16"]), "fp32_images_per_s": batch / H.median(t["fp32"]),
                "paired_ratios": r, "fp32_note": "TF32 matmuls/convolutions on (common/env.py sets allow_tf32 on CUDA)"}))
            fp32.close()

        # 3: torch.compile vs eager, ours bf16
        if smoke or args.no_compile:
            rows.append(H.row("gpu/compile_vs_eager", None, ">=", 1.2, {},
                              status="skipped (smoke)" if smoke else "skipped (--no-compile)"))
        elif over_budget("torch.compile"):
            rows.append(H.row("gpu/compile_vs_eager", None, ">=", 1.2, {}, status="skipped (time budget)"))
        else:
            try:
                comp = Bench(mod, tmp, "compile", base + ["precision=bf16", "train.compile=true"], warmup, timed)
                comp.ours(reuse_state=True)  # compiles (excluded from the comparison)
                print(f"  compile: first step took {comp.compile_s:.1f} s", flush=True)
                t = H.alternate({"compiled": lambda: comp.ours(reuse_state=True)[0], "eager": lambda: bf16.ours()[0]},
                                max(1, pairs - 1))
                r = H.paired_ratios(t["eager"], t["compiled"])
                print(f"  compiled ours: {batch / H.median(t['compiled']):,.0f} images/s", flush=True)
                c_ips = batch / H.median(t["compiled"])
                rows.append(H.row("gpu/compile_vs_eager", H.median(r), ">=", 1.2, {
                    "compiled_images_per_s": c_ips, "eager_images_per_s": batch / H.median(t["eager"]),
                    "compiled_mfu": c_ips * GFLOP_PER_IMAGE * 1e9 / (peak * 1e12),
                    "paired_ratios": r, "first_step_s (compile)": comp.compile_s}))
                comp.close()
            except Exception as e:  # a missing compiler toolchain must not cost the other rows
                traceback.print_exc()
                rows.append(H.row("gpu/compile_vs_eager", None, ">=", 1.2, {"error": f"{type(e).__name__}: {e}"[:500]},
                                  status="failed"))
        bf16.close()
    return H.report("gpu", rows, settings, t_start)


def main(argv=None):
    import sys
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", "--json", dest="out", default=None, help="write the results as JSON to this path")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no compile: checks the script runs")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--warmup", type=int, default=15, help="untimed steps at the start of each block")
    p.add_argument("--timed", type=int, default=100, help="timed steps per block")
    p.add_argument("--pairs", type=int, default=3, help="A/B pairs for ours vs bare (others use one fewer)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of this GPU, TFLOP/s")
    p.add_argument("--budget-s", type=float, default=420, help="skip the remaining comparisons after this many seconds")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison")
    p.add_argument("--decode-batch", type=int, default=256, help="batch of the JPEG decoding comparison")
    p.add_argument("--decode-workers", type=int, default=min(16, len(os.sched_getaffinity(0))),
                   help="data.workers of both arms of the JPEG decoding comparison (default: the cores, at most 16)")
    p.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # code-path check without a GPU
    args = p.parse_args(argv)
    args.argv = argv
    rep = run(args)
    H.print_report(rep)
    print("\n" + H.table([rep]), flush=True)
    H.write_json(args.out, rep)
    return rep


if __name__ == "__main__":
    main()
