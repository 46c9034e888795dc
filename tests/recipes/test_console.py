"""What a run prints while it trains, on a real terminal: the tqdm bars (training and evaluation) and
the log lines never share a line, and every log line says where the run is (step N/TOTAL, ETA)."""
import fcntl
import os
import pty
import re
import struct
import subprocess
import termios

from support.inprocess import run_inprocess
from support.outputs import metrics
from support.runs import ROOT, recipe_command

LINE = re.compile(r"^\[(train|val)\] +step +\d+/12 epoch \d+\.\d\d \| \d:\d\d:\d\d elapsed  ETA \d:\d\d:\d\d \| ")


def on_a_terminal(cmd: list[str], env: dict, timeout: float = 240) -> str:
    """Run cmd with stdout and stderr on one pseudo-terminal (120 columns); everything it wrote there."""
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sub, stderr=sub, env=env, cwd=ROOT)
    os.close(sub)
    chunks = []
    try:
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=timeout) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    finally:
        os.close(main)
        proc.kill() if proc.poll() is None else None
    return b"".join(chunks).decode(errors="replace")


def test_bars_and_log_lines_never_share_a_line_on_a_terminal(tmp_path):
    cmd, env = recipe_command("mnist_mlp", f"out_dir={tmp_path / 'r'}", "train.progress=true", "train.max_steps=12",
                              "train.log_every_steps=1", "train.eval_every_steps=4", "data.synthetic_test=256",
                              "train.eval_batch_size=16")
    text = on_a_terminal(cmd, env)
    pieces = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", p) for p in re.split(r"[\r\n]", text)]
    logged = [p for p in pieces if "[train]" in p or "[val]" in p]
    assert len([p for p in logged if "[train]" in p]) == 12 and len([p for p in logged if "[val]" in p]) == 3, text
    for p in logged:  # whole lines: no bar text before or inside them
        assert LINE.match(p) and "it/s" not in p and "%|" not in p, repr(p)
    assert any("step/s" in p or "s/step" in p for p in pieces), text[-2000:]  # the training bar was drawn
    assert any(p.startswith("eval:") and "batch" in p for p in pieces), text[-2000:]  # and the evaluation's


def test_an_evaluation_without_numbers_prints_no_line(tmp_path):
    """A GAN with eval.classifier=none (its debug config) evaluates a sample grid only: no `[val]` line."""
    out = tmp_path / "g"
    proc = run_inprocess("gan_mnist", f"out_dir={out}", "eval.classifier=none")
    assert [r["step"] for r in metrics(out) if r["split"] == "val"] == [8, 16]  # it did evaluate, twice
    assert len(list((out / "samples").glob("*.png"))) == 2
    assert "[val]" not in proc.stdout and "[train] step 16/16" in proc.stdout, proc.stdout
