"""Settings at the edge of what they are stored in, and user data that breaks the model's contract:
each either trains or stops with exit 2 and one line, never a traceback."""
from __future__ import annotations

import subprocess

import pytest

from support.inprocess import run_inprocess
from support.runs import recipe_command, run_recipe


def test_the_largest_seed_trains(tmp_path):
    """Every seed derived from it (data order, augmentation, weights) fits torch's 64 bits."""
    proc = run_inprocess("mnist_mlp", f"out_dir={tmp_path / 'run'}", f"seed={2**64 - 1}", "data.augment=true",
                         "train.max_steps=2", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


BAD_LABEL = '''
import os
import torch
from dataclasses import dataclass, field
from common.data.custom import dataset_data
from common.models.cnn import CNNConfig, small_cnn
from common.tasks.classifier import Classifier, ClassifierConfig, train_step


class Labels(torch.utils.data.Dataset):
    classes = ["a", "b"]

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.rand(1, 8, 8), 2 if i == 37 else i % 2  # sample 37: a third class the head lacks


@dataclass
class Config(ClassifierConfig):
    model: CNNConfig = field(default_factory=CNNConfig)


task = Classifier(Config, small_cnn, __file__, train_step=train_step,
                  build_data=dataset_data(lambda cfg, split: Labels(64), workers=int(os.environ["WORKERS"])))

if __name__ == "__main__":
    task.main()
'''


@pytest.mark.parametrize("workers", [0, 2])
def test_a_custom_dataset_label_outside_the_classes_names_the_sample(tmp_path, workers):
    script = tmp_path / "bad_labels.py"
    script.write_text(BAD_LABEL)
    cmd, env = recipe_command("mnist_mlp", f"out_dir={tmp_path / 'run'}", "train.batch_size=16", "train.max_steps=8",
                              config=None, env={"WORKERS": str(workers)})
    cmd = [str(script) if c.endswith("mnist_mlp.py") else c for c in cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    (line,) = [line for line in p.stderr.splitlines() if line.strip()]
    assert line == ("error: Labels (train) sample 37 has label 2, outside [0, 2) for 2 classes: fix the dataset's "
                    "labels, or its `classes` (or dataset_data(..., num_classes=N))")


def test_a_model_too_large_for_memory_names_its_size(tmp_path):
    """Larger than any address space, so that no overcommit setting lets the allocation through."""
    out = tmp_path / "run"
    p = run_recipe("mnist_mlp", f"out_dir={out}", "model.hidden=[1000000000000]", check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.strip() == ("error: the model's weights need 2.8 PiB (795,000,000,000,010 parameters), more memory than "
                                "this machine could allocate for them (before any gradient or optimizer state): make "
                                "the model smaller (model.*)")
    assert not (out / "checkpoints").exists()
