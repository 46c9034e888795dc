"""The README's "After training" section, run as written: its shell commands in order, then its Python
snippet, from a fresh directory holding only a link to recipes/ (the docs cannot drift from the code).

The snippet's accuracy must equal the --evaluate figure on the same weights and split, and its loss
agree to float precision (the snippet evaluates in batches of 1000, --evaluate in its own)."""
import re
import shlex
import subprocess
import sys

from support.runs import ROOT
from support.outputs import metrics

FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def section() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    body = text.split("\n## After training\n", 1)[1].split("\n## ", 1)[0]
    return {lang: code for lang, code in FENCE.findall(body)}


def test_readme_after_training_runs_as_written(tmp_path):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
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
    ev = [m for m in metrics(tmp_path / "runs/mnist_cnn_debug") if m["split"] == "eval"][-1]
    assert f"[eval] step {ev['step']} loss " in outputs[1] and ev["weights"] == "ema"
    assert "re-initialised (shape differs; this run's fresh init is kept): " in outputs[3]
    snippet = subprocess.run([sys.executable, "-c", blocks["python"]], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert snippet.returncode == 0, snippet.stderr[-3000:]
    acc, loss = map(float, re.fullmatch(r"acc1 (\S+) loss (\S+)\n", snippet.stdout).groups())
    assert acc == round(ev["acc1"], 2) and abs(loss - ev["loss"]) < 1e-4, (snippet.stdout, ev)
