"""Maxout units (Goodfellow et al. 2013): the discriminators of gan_mnist and cgan_mnist."""
from __future__ import annotations

import torch.nn as nn


class Maxout(nn.Module):
    """max over `pieces` linear functions per unit."""

    def __init__(self, d_in: int, units: int, pieces: int):
        super().__init__()
        self.linear, self.units, self.pieces = nn.Linear(d_in, units * pieces), units, pieces

    def forward(self, x):
        return self.linear(x).view(x.shape[0], self.units, self.pieces).amax(-1)  # not len(x): it would fix the exported batch size
