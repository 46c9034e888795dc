"""Early stopping on a GAN's val/fd, where smaller is better (the judge: conftest.judge_dir)."""
import pytest

from common.tasks.gan import GanConfig, METRICS
from common.train.stopping import watched
from support.inprocess import run_inprocess
from support.outputs import metrics


def test_val_fd_is_followed_downwards():
    cfg = GanConfig()
    cfg.train.early_stop_metric = "val/fd"
    assert watched(cfg, METRICS) == (("val/fd", "min"), None)
    cfg.optim.schedule = "plateau"  # the early-stop metric, else ckpt.best_metric (a GAN's: val/fd)
    assert watched(cfg, METRICS) == (("val/fd", "min"), ("val/fd", "min"))
    cfg.train.early_stop_metric = "none"
    assert watched(cfg, METRICS) == (None, ("val/fd", "min"))


@pytest.mark.parametrize("min_delta", [pytest.param(0, marks=pytest.mark.heavy), 5])
def test_gan_stops_when_val_fd_stops_falling(judge_dir, tmp_path, min_delta):
    # Evaluations at 8, 16 and 24 (the last step), patience 1: the run stops at 16 exactly when the FD there is
    # not below the one at 8 by more than min_delta, else it finishes. On these 24 steps the FD falls by less
    # than 5: min_delta 0 trains on (larger-is-better would have stopped), min_delta 5 stops.
    proc = run_inprocess("gan_mnist", f"out_dir={tmp_path}", f"eval.classifier={judge_dir}", "train.max_steps=24",
                         "train.early_stop_metric=val/fd", "train.early_stop_patience=1",
                         f"train.early_stop_min_delta={min_delta}")
    fd = {r["step"]: r["fd"] for r in metrics(tmp_path) if r["split"] == "val"}
    (end,) = [r for r in metrics(tmp_path) if r["split"] == "end"]
    if not fd[16] < fd[8] - min_delta:
        assert list(fd) == [8, 16] and (end["status"], end["step"]) == ("stopped_early", 16)
        assert end["reason"].startswith(f"val/fd did not improve by more than {min_delta} for 1 evaluations")
        assert "run gan_mnist stopped early at step 16 of 24" in proc.stdout
    else:
        assert list(fd) == [8, 16, 24] and (end["status"], end["step"]) == ("finished", 24)
