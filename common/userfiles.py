"""Reading a file a user gave (checkpoint, export, hub weights, config): every way it can be damaged becomes
one UserError naming the file, what is wrong with it and the fix, never a traceback.

Damage means: empty (an interrupted copy), truncated, garbage, a directory in its place, no permission,
pickled code (torch files load with weights_only=True; the refused global is named) or the wrong type
inside (checked with `expect`/`tensors` before anything indexes into it). A new reader of a user's file
uses these and joins the table of tests/faults/test_damaged_inputs.py (docs/reliability.md).
"""
from __future__ import annotations

from pathlib import Path

import torch

from common.config import UserError


class DamagedFile(UserError):
    """A user's file could not be read or holds the wrong thing; the message names it and the fix."""


def first_line(e: BaseException) -> str:
    """The line of an error that says what happened: torch's weights_only refusal names the refused global
    on a later line; an error with an empty message is named by its type."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    line = next((line for line in lines if "unsupported" in line.lower()), lines[0] if lines else type(e).__name__)
    return line.split(". ")[0]  # torch appends advice meant for its own callers


def problem(path, e: BaseException) -> str:
    """What is wrong with `path`, in a few words, after reading it raised `e`."""
    path = Path(path)
    if isinstance(e, FileNotFoundError) and path.exists():  # safetensors reports any failure to open as this
        try:
            open(path, "rb").close()
        except OSError as real:
            e = real
    if isinstance(e, IsADirectoryError) or path.is_dir():
        return "it is a directory, not a file"
    if isinstance(e, PermissionError):
        return "permission denied: make it readable to this user"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    try:
        if path.stat().st_size == 0:
            return "it is empty: 0 bytes, as an interrupted copy leaves"
    except OSError:
        pass
    return f"{type(e).__name__}: {first_line(e)[:300]}"


def damaged(what: str, path, e: BaseException, fix: str, error: type[UserError] = DamagedFile) -> UserError:
    if "unsupported global" in first_line(e).lower():  # nothing of it ran: the unpickler stopped at the global
        return error(f"{what} {path} could not be loaded safely (it holds objects other than tensors and plain "
                     f"values: {first_line(e)}); {fix}")
    return error(f"{what} {path} cannot be read ({problem(path, e)}); {fix}")


def torch_load(path, what: str, fix: str, error: type[UserError] = DamagedFile, **kwargs):
    """torch.load(path, weights_only=True) on the CPU; any failure is `error` (a UserError) naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except Exception as e:  # OSError, EOFError, UnpicklingError, RuntimeError (zip), ...: all mean a bad file
        raise damaged(what, path, e, fix, error) from None


def expect(value, kind: type | tuple[type, ...], what: str, path, where: str, fix: str):
    """`value` if it is a `kind`, else a DamagedFile naming the file, the place inside it and both types."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise DamagedFile(f"{what} {path} holds the wrong type: {where} should be {names}, got "
                      f"{type(value).__name__}; {fix}")


def fields(value, schema: dict[str, type | tuple[type, ...]], what: str, path, where: str, fix: str) -> dict:
    """`value` if it is a dict with every key of `schema` of its type (others allowed), else a DamagedFile."""
    expect(value, dict, what, path, where, fix)
    for key, kind in schema.items():
        if key not in value:
            raise DamagedFile(f"{what} {path} is incomplete: {where} has no '{key}'; {fix}")
        expect(value[key], kind, what, path, f"{where}['{key}']", fix)
    return value


def tensors(value, what: str, path, where: str, fix: str) -> dict[str, torch.Tensor]:
    """`value` if it is a state_dict ({name: tensor}), else a DamagedFile."""
    expect(value, dict, what, path, where, fix)
    for k, v in value.items():
        expect(k, str, what, path, f"a key of {where}", fix)
        expect(v, torch.Tensor, what, path, f"{where}['{k}']", fix)
    return value
