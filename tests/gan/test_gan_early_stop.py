"""Early stopping on a GAN's val/fd, where smaller is better (the judge: conftest.judge_dir)."""
from support.inprocess import run_inprocess
from support.outputs import metrics


def test_gan_stops_when_val_fd_stops_falling(judge_dir, tmp_path):
    # Evaluations at 8, 16 and 24 (the last step), patience 1: the run stops at 16 exactly when the FD there
    # is not below the one at 8 (with larger-is-better it would be the other way round), else it finishes.
    proc = run_inprocess("gan_mnist", f"out_dir={tmp_path}", f"eval.classifier={judge_dir}", "train.max_steps=24",
                         "train.early_stop_metric=val/fd", "train.early_stop_patience=1")
    fd = {r["step"]: r["fd"] for r in metrics(tmp_path) if r["split"] == "val"}
    (end,) = [r for r in metrics(tmp_path) if r["split"] == "end"]
    if fd[16] >= fd[8]:
        assert list(fd) == [8, 16] and (end["status"], end["step"]) == ("stopped_early", 16)
        assert end["reason"].startswith("val/fd did not improve by more than 0 for 1 evaluations")
        assert "run gan_mnist stopped early at step 16 of 24" in proc.stdout
    else:
        assert list(fd) == [8, 16, 24] and (end["status"], end["step"]) == ("finished", 24)
