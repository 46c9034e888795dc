"""Early stopping and the plateau schedule under the engines other than ddp, 2 CPU processes each (heavy:
ddp's torchrun case is in the default run, tests/recipes/test_early_stop.py)."""
import pytest

from support.launchutil import launch
from support.outputs import metrics

# optim.lr=1e-30: the metric never improves. Evaluations at 4 (the best), 8 (plateau: x0.5 at once, patience
# 0) and 12 (the second without improvement: early stopping ends the run there).
STEPS = ("optim.lr=1e-30", "train.max_steps=64", "train.eval_every_steps=4", "train.log_every_steps=4",
         "train.ckpt_every_steps=4", "data.synthetic_train=256", "data.synthetic_test=64",
         "train.early_stop_metric=val/acc1", "train.early_stop_patience=2", "optim.schedule=plateau",
         "optim.plateau_factor=0.5", "optim.plateau_patience=0", "dist_timeout_s=120")


@pytest.mark.heavy
@pytest.mark.parametrize("launcher,engine", [("torchrun", "accelerate"), ("deepspeed", "deepspeed"), ("torchrun", "fsdp")])
def test_every_engine_stops_every_rank_at_the_same_step(launcher, engine, tmp_path):
    extra = ("deepspeed_config=launch/deepspeed/zero2.json",) if engine == "deepspeed" else (f"engine={engine}",)
    proc = launch(launcher, "mnist_mlp", tmp_path, *STEPS, *extra)
    assert "run mnist_mlp stopped early at step 12 of 64" in proc.stdout, proc.stdout[-3000:]
    rows = metrics(tmp_path)
    assert [(r["status"], r["step"]) for r in rows if r["split"] == "end"] == [("stopped_early", 12)]
    assert {r["step"]: r["lr"] for r in rows if r["split"] == "train"} == {4: 1e-30, 8: 1e-30, 12: 0.5e-30}
    assert (tmp_path / "checkpoints" / "step_00000012").is_dir()
