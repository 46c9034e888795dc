"""A model too large for memory: building it is a UserError naming the size of its weights, not an
allocator traceback. `within_memory(build)` wraps a task's build_models; the size is measured only after
an allocation failed, by building the same models again on the meta device (no memory)."""
from __future__ import annotations

import functools
import re
from itertools import chain

import torch

from common.config import UserError


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _out_of_memory(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


def within_memory(build):
    """build(...) -> {name: model}; running out of memory while it allocates the weights is a UserError."""
    @functools.wraps(build)
    def wrapped(*args, **kwargs):
        try:
            return build(*args, **kwargs)
        except RuntimeError as e:  # torch.OutOfMemoryError is one
            if not _out_of_memory(e):
                raise
            failed = re.search(r"allocate (\d+) bytes", str(e))
        try:
            with torch.device("meta"):
                models = build(*args, **kwargs)
            n = sum(t.numel() * t.element_size() for m in models.values() for t in chain(m.parameters(), m.buffers()))
            params = sum(p.numel() for m in models.values() for p in m.parameters())
            need = f"the model's weights need {_size(n)} ({params:,} parameters)"
        except Exception:  # noqa: BLE001 (a model that cannot be built on the meta device: name the failed allocation)
            need = f"the model needs more than {_size(int(failed.group(1)))}" if failed else "the model needs more"
        raise UserError(f"{need}, more memory than this machine could allocate for them (before any gradient "
                        "or optimizer state): make the model smaller (model.*)") from None
    return wrapped
