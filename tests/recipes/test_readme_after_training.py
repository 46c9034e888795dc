"""The README's "After training" section, run as written: its shell commands in order, then its Python
snippet, from a fresh directory holding only a link to recipes/ and a folder my_photos/ of the user's own
JPEGs (real Fashion-MNIST test images, enlarged, in colour) (the docs cannot drift from the code).

The snippet's class for a JPEG, from the exported weights and from the ONNX file in onnxruntime, is --predict's
for that file. The exported file, loaded through the same
public API without a task, gives the --evaluate figures on the run's test split: the accuracy exactly, the
loss to float precision (evaluated here in batches of 1000, --evaluate in its own)."""
import csv
import re
import shlex
import subprocess
import sys

import torch
import torch.nn.functional as F

from common.data.datasets import load_split, read_idx
from common.lifecycle.export import load_model
from support.images import FASHION
from support.runs import ROOT
from support.outputs import metrics

FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
PHOTOS = {"boot.jpg": 0, "pullover.jpg": 1, "trouser.jpg": 2}  # file -> index in the Fashion-MNIST test split


def section() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    body = text.split("\n## After training\n", 1)[1].split("\n## ", 1)[0]
    return {lang: code for lang, code in FENCE.findall(body)}


def my_photos(where):
    from PIL import Image
    where.mkdir()
    images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    for name, i in PHOTOS.items():
        Image.fromarray(images[i]).convert("RGB").resize((90 + 7 * i, 110)).save(where / name, quality=92)


def test_readme_after_training_runs_as_written(tmp_path):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    my_photos(tmp_path / "my_photos")
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    blocks = section()
    outputs = []
    for line in blocks["bash"].splitlines():
        args = shlex.split(line, comments=True)
        assert args[0] == "python", line
        proc = subprocess.run([sys.executable, *args[1:], "device=cpu"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    run = tmp_path / "runs/mnist_cnn_debug"
    ev = [m for m in metrics(run) if m["split"] == "eval"][-1]
    assert f"[eval] step {ev['step']} loss " in outputs[1] and ev["weights"] == "ema"
    with open(run / "predictions" / "my_photos.csv", newline="") as f:
        predicted = {row["path"]: row for row in csv.DictReader(f)}
    assert sorted(predicted) == [f"my_photos/{name}" for name in sorted(PHOTOS)] and "3 classified" in outputs[2]
    assert "checked mnist_cnn.onnx against eager PyTorch on the first eval batch" in outputs[4]
    assert "re-initialised (shape differs; this run's fresh init is kept): " in outputs[5]
    snippet = subprocess.run([sys.executable, "-c", blocks["python"]], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert snippet.returncode == 0, snippet.stderr[-3000:]
    assert snippet.stdout == 2 * (predicted["my_photos/boot.jpg"]["class_1"] + "\n"), (snippet.stdout, predicted)
    model, info = load_model(run / "mnist_cnn.safetensors")
    images, labels = load_split(info.config.data, "test")  # uint8 [10000, 1, 28, 28], the run's test split
    with torch.no_grad():
        logits = torch.cat([model(x) for x in info.preprocess(images).split(1000)])
    acc, loss = (logits.argmax(1) == labels).float().mean().item() * 100, F.cross_entropy(logits, labels).item()
    assert round(acc, 2) == round(ev["acc1"], 2) and abs(loss - ev["loss"]) < 1e-4, (acc, loss, ev)
