"""Load the tensors of a state_dict that fit a model (same name and shape), and report what was
loaded, re-initialised, missing and ignored: warm start (init_from) and pretrained weights.
"""
from __future__ import annotations

import torch.nn as nn

from common.config import UserError

SHOWN = 6  # names listed per kind in the report before "... and N more"


def load_matching(model: nn.Module, weights: dict, source: str) -> list[str]:
    """Load every tensor of `weights` whose name and shape match model's; report lines. A source
    that shares no tensor with the model is an error (another architecture, most likely)."""
    own = model.state_dict()
    fits = {k: v for k, v in weights.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fits:
        raise UserError(f"{source} shares no weights with this model (its tensors: {_names(list(weights))}; the "
                        f"model's: {_names(list(own))}): point init_from (or the weights file) at a run of the "
                        "same architecture")
    model.load_state_dict(fits, strict=False)
    reshaped = [f"{k} {list(weights[k].shape)} -> {list(own[k].shape)}" for k in weights
                if k in own and k not in fits]
    lines = [f"loaded {len(fits)} of {len(own)} tensors from {source}"]
    for what, names in (("re-initialised (shape differs; this run's fresh init is kept)", reshaped),
                        ("not in the source (fresh init)", [k for k in own if k not in weights]),
                        ("in the source but not in this model (ignored)", [k for k in weights if k not in own])):
        if names:
            lines.append(f"  {what}: {_names(names)}")
    return lines


def _names(names: list[str]) -> str:
    more = f" ... and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more
