"""Settings at the edge of what they are stored in, and user data that breaks the model's contract:
each either trains or stops with exit 2 and one line, never a traceback."""
from __future__ import annotations

from tests.helpers import run_recipe


def test_the_largest_seed_trains(tmp_path):
    """Every seed derived from it (data order, augmentation, weights) fits torch's 64 bits."""
    proc = run_recipe("mnist_mlp", f"out_dir={tmp_path / 'run'}", f"seed={2**64 - 1}", "data.augment=true",
                      "train.max_steps=2", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
