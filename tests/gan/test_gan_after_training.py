"""--evaluate and --export of a GAN run: the Fréchet distance of training's last evaluation is
reproduced from the checkpoint, and the exported generator is the checkpoint's EMA copy of G."""
import torch

from common.formats.export import read_export
from support.inprocess import run_inprocess
from support.outputs import metrics


def test_gan_evaluate_reproduces_fd_and_export_writes_the_generator(judge_dir, tmp_path):
    out = tmp_path / "run"
    run_inprocess("gan_mnist", f"out_dir={out}", f"eval.classifier={judge_dir}", "train.ema_decay=0.9")
    run_inprocess("gan_mnist", "--evaluate", str(out), f"eval.classifier={judge_dir}", config=None)
    val, ev = ([m for m in metrics(out) if m["split"] == s][-1] for s in ("val", "eval"))
    assert ev["weights"] == "ema" and ev["step"] == val["step"] and abs(ev["fd"] - val["fd"]) <= 1e-6 * val["fd"]
    run_inprocess("gan_mnist", "--export", str(out), "--to", str(tmp_path / "g.pt"), config=None)
    weights, meta = read_export(tmp_path / "g.pt")
    state = torch.load(ev["checkpoint"] + "/state.pt", weights_only=True)
    assert meta["model"] == "G" and meta["input"]["shape"] == [1, 28, 28]
    assert weights.keys() == state["models"]["G"].keys()
    assert all(torch.equal(v, state["ema"]["G"][f"module.{k}"]) for k, v in weights.items())
    p = run_inprocess("gan_mnist", "--evaluate", str(out), "eval.classifier=none", config=None, check=False)
    assert p.returncode == 2 and "gave no metrics with eval.classifier=none" in p.stderr
    assert "set eval.classifier=RUN_DIR of an mnist_cnn run" in p.stderr
