"""eval.classifier=auto: the Fréchet-distance judge is trained once on first use, cached, and reused;
the short judge of recipes/configs/mnist_cnn_fd_judge.yaml ranks images of known quality as ground truth does."""
import os
import shutil
import subprocess
import sys

import pytest

from bench.fid_reference import reference_rows
from common.config import BaseConfig
from common.metrics.fid import load_judge
from common.tasks import judge as cache
from common.train.runtime import runtime
from support.inprocess import run_inprocess
from support.outputs import metrics
from support.runs import ROOT, free_port

TRAINING = "training the Fréchet-distance judge once"


def test_the_judge_is_trained_once_into_the_cache_and_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DTRAIN_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "judge.yaml"  # mnist_cnn's debug schedule: seconds, where the real judge takes minutes
    shutil.copy(ROOT / "recipes" / "configs" / "mnist_cnn_debug.yaml", config)
    with runtime(BaseConfig(device="cpu")) as rt:
        where = cache.auto_judge(rt, config, ("device=cpu", "train.progress=false"))
        assert TRAINING in capsys.readouterr().out
        assert where == str(cache.judge_dir(config)) and cache.judge_dir(config).parent == tmp_path / "cache"
        assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.judge_dir(config).name]  # no temporary left
        assert load_judge(where, rt.device).source.startswith(where)  # a finished mnist_cnn run
        stamp = (cache.judge_dir(config) / "metrics.jsonl").stat().st_mtime_ns
        assert cache.auto_judge(rt, config) == where and TRAINING not in capsys.readouterr().out
        assert (cache.judge_dir(config) / "metrics.jsonl").stat().st_mtime_ns == stamp
    config.write_text(config.read_text() + "# edited\n")
    assert str(cache.judge_dir(config)) != where  # an edited YAML names a new judge


@pytest.mark.heavy
def test_rank_0_trains_the_judge_while_the_other_rank_waits(tmp_path):
    config = tmp_path / "judge.yaml"
    shutil.copy(ROOT / "recipes" / "configs" / "mnist_cnn_debug.yaml", config)
    cache_dir = tmp_path / "cache"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), str(ROOT / "tests" / "support" / "judge_worker.py"), str(config)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "DTRAIN_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    where = next(cache_dir.iterdir())
    assert p.stdout.count(TRAINING) == 1
    assert f"[rank 1] waiting for rank 0 to train the Fréchet-distance judge into {where}" in p.stdout
    assert f"rank 0 judge {where}" in p.stdout and f"rank 1 judge {where}" in p.stdout
    assert (where / "checkpoints").is_dir() and len(list(cache_dir.iterdir())) == 1


def test_a_gan_with_eval_classifier_auto_uses_the_cached_judge(judge_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DTRAIN_CACHE", str(tmp_path / "cache"))
    shutil.copytree(judge_dir, cache.judge_dir())  # as if an earlier run had trained it
    out = tmp_path / "run"
    p = run_inprocess("gan_mnist", f"out_dir={out}", "eval.classifier=auto", "train.max_steps=4",
                      "train.eval_every_steps=4", "eval.samples=40")
    assert TRAINING not in p.stdout
    val = [r for r in metrics(out) if r["split"] == "val"]
    assert val and val[-1]["fd"] > 0


@pytest.mark.heavy
def test_the_first_use_judge_ranks_damaged_real_images_as_the_5_epoch_judge(tmp_path, monkeypatch):
    """mnist_cnn_fd_judge.yaml's judge (about 2 minutes on 2 CPU cores), on bench/fid_reference.py's sets: the
    FDs come in the 5-epoch judge's order (0.15, 1.90, 20.7, 21.5, 55.1: docs/generative.md)."""
    monkeypatch.setenv("DTRAIN_CACHE", str(tmp_path / "cache"))
    with runtime(BaseConfig(device="cpu")) as rt:
        acc, rows = reference_rows(load_judge(cache.auto_judge(rt), rt.device), rt)
    fd = [value for _, value in rows]
    assert acc > 85 and all(a < b for a, b in zip(fd, fd[1:])), rows
