"""Open a `.pt2` or `.onnx` file written by `--export --to FILE` for inference, without the recipe.

`load(path, device="cpu") -> (forward, meta)`: meta is the sidecar `<path>.json` (the export metadata
of describe() plus `inputs`, `outputs`, `dynamic_batch`, `opset` and the `check` the export passed);
`forward(*inputs) -> tensor` takes float tensors (and int64 labels where `inputs` says so) with any
batch size, in the order of meta["inputs"], and returns the output on `device`. A .pt2 runs as
torch.export.load(path).module(); an .onnx file through onnxruntime (CPUExecutionProvider on "cpu").
A missing, damaged or foreign file or sidecar is a UserError naming it and the fix.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from common.config import UserError
from common.userfiles import damaged, fields

SUFFIXES = (".pt2", ".onnx")
ONNX_MISSING = "pip install -r requirements-onnx.txt"  # onnx, onnxruntime, onnxscript: optional, like the trackers
FIX = "give a file written by `python recipes/<name>.py --export RUN_DIR --to FILE.pt2` (or .onnx) with its FILE.json"
SIDECAR = {"recipe": str, "model": str, "weights": str, "step": int, "input": dict, "inputs": list, "check": dict}


def sidecar(path) -> Path:
    """The metadata file beside an exported program: model.onnx -> model.onnx.json."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def load(path, device="cpu"):
    """(forward, meta) of an exported .pt2 or .onnx file and its sidecar JSON."""
    meta = read_sidecar(path)
    return program(path, device), meta


def read_sidecar(path) -> dict:
    where = sidecar(path)
    try:
        meta = json.loads(where.read_text())
    except (OSError, ValueError) as e:
        raise damaged("the export's metadata", where, e, FIX) from None
    return fields(meta, SIDECAR, "the export's metadata", where, "the file", FIX)


def program(path, device="cpu"):
    """forward(*inputs) -> output tensor on `device`, for a .pt2 or .onnx file."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise UserError(f"{path}: an exported program ends in .pt2 or .onnx; {FIX}")
    opener = _pt2 if path.suffix == ".pt2" else _onnx
    try:
        return opener(path, torch.device(device))
    except (UserError, ImportError):
        raise
    except Exception as e:  # a truncated, foreign or unreadable file: each library raises its own kinds
        raise damaged("the exported program", path, e, FIX) from None


def _pt2(path: Path, device: torch.device):
    module = torch.export.load(str(path)).module().to(device)

    @torch.no_grad()
    def forward(*inputs):
        return module(*(x.to(device) for x in inputs))
    return forward


def _onnx(path: Path, device: torch.device):
    ort = onnx_runtime()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), providers=providers)
    names = [i.name for i in session.get_inputs()]

    def forward(*inputs):
        if len(inputs) != len(names):
            raise TypeError(f"{path.name} takes {len(names)} inputs ({', '.join(names)}), got {len(inputs)}")
        feed = {n: x.detach().cpu().numpy() for n, x in zip(names, inputs)}
        return torch.from_numpy(session.run(None, feed)[0]).to(device)
    return forward


def onnx_runtime():
    """onnxruntime, imported on first use (an optional dependency; importing it costs startup time)."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"ONNX files need onnxruntime, which is not installed: {ONNX_MISSING}") from None
    return onnxruntime
