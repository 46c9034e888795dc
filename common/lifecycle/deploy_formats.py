"""`--export ... --to FILE.pt2 | FILE.onnx`: the exported model as a program that runs without this code.

.pt2 is torch.export's program, .onnx the dynamo ONNX exporter's; both have a dynamic batch dimension.
Before the file takes its name it is opened the way a deployment opens it (common/lifecycle/deployed.py;
ONNX through onnxruntime on the CPU) and run against the eager model on real inputs (Task.inputs of the
first eval batch, through the eval transform: images, or a generator's noise, labels or input images) at
that batch size and at batch 1. The max absolute difference must be within RTOL x max(1, max |eager
output|), else exit 2 and nothing is written. Beside the file, `<FILE>.json`: describe()'s metadata plus
the program's `inputs`, `outputs`, `dynamic_batch`, `opset` and the `check` it passed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from common.config import UserError
from common.formats.writes import write_failure
from common.lifecycle import deployed
from common.lifecycle.inputs import replacing
from common.userfiles import first_line

# fp32 against fp32: the programs run the same ops with other kernels and summation orders (ONNX Runtime
# fuses conv + bias, reorders reductions), ~1e-6 relative measured; a real fault (other weights, BatchNorm
# or dropout in training mode, a batch-specialised shape) is off by 1e-2 or more.
RTOL = 1e-4
CHECK_ROWS = 32  # rows of the first eval batch the check runs on (a batch of 224 px images is slow on a CPU)


def require(path: Path) -> None:
    """Stop before any work when `path` asks for ONNX and the optional packages are missing."""
    if path.suffix != ".onnx":
        return
    try:  # imported here: optional dependencies (requirements-onnx.txt), slow to import
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter writes through it)
    except ImportError as e:
        raise UserError(f"--to {path}: ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is not "
                        f"installed): {deployed.ONNX_MISSING}") from None
    deployed.onnx_runtime()


def real_inputs(task, cfg, loaders) -> dict[str, torch.Tensor]:
    """The exported model's inputs, on the CPU, from the first eval batch (at least 2 rows: an example
    batch of 1 would let the exporter fix the batch dimension)."""
    batch = next(iter(loaders.eval))
    inputs = task.inputs(cfg, batch) if task.inputs else {"images": batch[0]}
    inputs = {k: v[:CHECK_ROWS].detach().cpu().contiguous() for k, v in inputs.items()}
    return {k: torch.cat([v, v]) if len(v) < 2 else v for k, v in inputs.items()}


def export_program(task, cfg, loaders, weights: dict, path: Path, meta: dict, log) -> None:
    """Build the exported model with `weights`, export it to `path` (.pt2 or .onnx), check it, write the sidecar."""
    model = task.build_models(cfg, loaders)[task.exported]
    model.load_state_dict(weights)
    model = model.cpu().float().eval()
    inputs = real_inputs(task, cfg, loaders)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        opset = _export(model, inputs, path, tmp)
        check = compare(deployed.program(tmp), model, inputs, path)
        log(f"checked {path.name} against eager PyTorch on the first eval batch ({check['batch_sizes'][0]} rows) "
            f"and at batch 1: max abs diff {check['max_abs_diff']:.2e}, tolerance {check['tolerance']:.1e} "
            f"({RTOL:g} x max(1, max |output| {check['max_abs_output']:.3g}))")
        names = list(inputs)
        described = {**meta, "inputs": [spec(n, inputs[n]) for n in names],
                     "outputs": [{"name": "output", "dtype": "float32"}], "dynamic_batch": True, "opset": opset,
                     "check": check}
        _place(tmp, path, described)
    finally:
        tmp.unlink(missing_ok=True)


def spec(name: str, x: torch.Tensor) -> dict:
    return {"name": name, "dtype": str(x.dtype).removeprefix("torch."), "shape": ["batch", *x.shape[1:]]}


def _export(model, inputs: dict, path: Path, tmp: Path) -> int | None:
    """Write the program to tmp; the ONNX opset (None for .pt2). A model the exporter cannot trace is a
    UserError naming the exporter's reason (the .safetensors export still works for it)."""
    args = tuple(inputs.values())
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in args)
    try:
        program = torch.export.export(model, args, dynamic_shapes=dynamic)
        if path.suffix == ".pt2":
            torch.export.save(program, str(tmp))
            return None
        onnx_program = torch.onnx.export(program, args, input_names=list(inputs), output_names=["output"],
                                         dynamo=True, verbose=False)
        onnx_program.save(str(tmp))
        return max(o.version for o in onnx_program.model_proto.opset_import if o.domain in ("", "ai.onnx"))
    except Exception as e:
        reason = write_failure(e, path.parent)
        if reason is not None:
            raise UserError(f"could not write {path}: {reason}; nothing was replaced. Free space or fix "
                            "permissions there, or choose another file with --to FILE") from None
        raise UserError(f"--to {path}: the model could not be exported to {path.suffix} ({type(e).__name__}: "
                        f"{first_line(e)[:300]}); export it to .safetensors instead") from None


@torch.no_grad()
def compare(forward, model, inputs: dict, path: Path) -> dict:
    """Run the program and the eager model on the inputs and on their first row; the check's figures, or a
    UserError when they differ by more than the tolerance."""
    n, worst, scale = len(next(iter(inputs.values()))), 0.0, 0.0
    for rows in (n, 1):
        args = [x[:rows] for x in inputs.values()]
        want, got = model(*args), forward(*args)
        if got.shape != want.shape:
            raise UserError(f"--to {path}: the exported program gives shape {list(got.shape)} at batch {rows}, "
                            f"eager PyTorch {list(want.shape)}; nothing was written. Export to .safetensors instead")
        worst = max(worst, (got.float() - want.float()).abs().max().item())
        scale = max(scale, want.abs().max().item())
    tol = RTOL * max(1.0, scale)
    if not worst <= tol:  # NaN fails too
        raise UserError(f"--to {path}: the exported program's output differs from eager PyTorch's by {worst:.2e} "
                        f"(tolerance {tol:.1e}) on the first eval batch; nothing was written. Export to "
                        ".safetensors instead, or report the model as an export bug")
    return {"on": "first eval batch", "batch_sizes": [n, 1], "max_abs_diff": worst, "tolerance": tol,
            "max_abs_output": scale, "rtol": RTOL}


def _place(tmp: Path, path: Path, meta: dict) -> None:
    """The sidecar, then the program, each written to a temporary name and renamed."""
    side, side_tmp = deployed.sidecar(path), deployed.sidecar(tmp)
    with replacing(path, side_tmp):
        side_tmp.write_text(json.dumps(meta, indent=1) + "\n")
        tmp.replace(path)
        side_tmp.replace(side)