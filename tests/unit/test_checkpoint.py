
from support.tmpfs import tmpfs  # noqa: F401 (a fixture)

import pytest
import torch
import torch.nn as nn

from common.formats.checkpoint import CheckpointError, load_file, verify
from common.train.checkpoint import Checkpointer
from common.train.optim import build_scheduler
from common.train.resume import position
from common.config import OptimConfig
from common.train.state import StateMismatch, TrainState, make_ema


def make_state(seed=0, schedule="cosine"):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = build_scheduler(OptimConfig(schedule=schedule, warmup_steps=2), opt, 10)
    return TrainState(models={"net": model}, optims={"net": opt}, scheds={"net": sched},
                      ema={"net": make_ema(model, 0.9)})


def train_some(state, steps=3):
    for _ in range(steps):
        loss = state.models["net"](torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        state.optims["net"].step()
        state.optims["net"].zero_grad()
        state.scheds["net"].step()
        state.update_ema(state.step + 1)
        state.step += 1


def payload(state):
    return state.state_dict({"seed": 0}, "test")


@pytest.mark.parametrize("schedule", ["cosine", "step", "onecycle", "constant"])
def test_round_trip_restores_everything(tmp_path, schedule):
    a = make_state(schedule=schedule)
    train_some(a)
    ck = Checkpointer(tmp_path)
    ck.save(payload(a), a.step)
    saved_rng = torch.get_rng_state()
    torch.manual_seed(123)
    b = make_state(seed=1, schedule=schedule)
    b.load_state_dict(load_file(ck.latest_valid()), "test")
    position(b.scheds["net"], b.step)  # what resume does: this run's schedule, at the checkpoint's step
    assert torch.equal(torch.get_rng_state(), saved_rng)
    assert b.step == 3
    for k, v in a.models["net"].state_dict().items():
        assert torch.equal(v, b.models["net"].state_dict()[k])
    assert b.scheds["net"].get_last_lr() == a.scheds["net"].get_last_lr()
    assert torch.equal(a.optims["net"].state_dict()["state"][0]["momentum_buffer"],
                       b.optims["net"].state_dict()["state"][0]["momentum_buffer"])
    for (_, pa), (_, pb) in zip(a.ema["net"].state_dict().items(), b.ema["net"].state_dict().items()):
        assert torch.equal(pa, pb)
    # Both continue identically from the same random stream.
    train_some(a)
    torch.set_rng_state(saved_rng)
    train_some(b)
    assert all(torch.equal(x, y) for x, y in zip(a.models["net"].parameters(), b.models["net"].parameters()))


def test_keep_last_n_plus_best(tmp_path):
    s = make_state()
    ck = Checkpointer(tmp_path, keep_last=2)
    for step in range(1, 6):
        ck.save(payload(s), step, is_best=step == 2, metric=float(step))
    assert [p.name for p in ck.all()] == ["step_00000005", "step_00000004", "step_00000002"]
    assert ck.best_name() == "step_00000002"


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest"])
def test_corrupt_newest_falls_back_to_previous_with_a_warning(tmp_path, damage):
    s = make_state()
    ck = Checkpointer(tmp_path, keep_last=5)
    ck.save(payload(s), 1)
    ck.save(payload(s), 2)
    f = tmp_path / "step_00000002" / "state.pt"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(bytes(data[: len(data) // 3]))
    else:
        (tmp_path / "step_00000002" / "MANIFEST.json").unlink()
    assert verify(tmp_path / "step_00000002") is not None
    with pytest.warns(UserWarning, match="skipping checkpoint .*step_00000002"):
        assert ck.latest_valid().name == "step_00000001"
    with pytest.raises(CheckpointError, match="not usable"):
        load_file(tmp_path / "step_00000002")


def test_pickled_object_is_rejected(tmp_path):
    """weights_only=True: a checkpoint that carries arbitrary objects does not load."""
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    s = make_state()
    p = payload(s)
    p["extra"] = Evil()
    ck = Checkpointer(tmp_path)
    ck.save(p, 1)  # checksums match: only the content is bad
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        load_file(tmp_path / "step_00000001")


def test_checkpoint_from_another_recipe_or_model_is_refused(tmp_path):
    s = make_state()
    Checkpointer(tmp_path).save(payload(s), 1)
    sd = load_file(tmp_path / "step_00000001")
    with pytest.raises(StateMismatch, match="written by recipe 'test', not 'other'"):
        make_state().load_state_dict(sd, "other")
    wide = make_state()
    wide.models["net"][0] = nn.Linear(4, 16)
    with pytest.raises(StateMismatch, match="do not fit this model"):
        wide.load_state_dict(sd, "test")
    sd["format_version"] = 99
    with pytest.raises(StateMismatch, match="newer than this code"):
        make_state().load_state_dict(sd, "test")


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_interrupted_write_leaves_previous_intact(tmpfs, fault):
    """A real full (or read-only) tmpfs: torch.save fails (ENOSPC comes back wrapped in a RuntimeError);
    the error names the fault and the intact previous checkpoint, which is untouched."""
    fs = tmpfs("1m")
    s = make_state()
    ck = Checkpointer(fs.path)
    ck.save(payload(s), 1)
    before = (fs.path / "step_00000001" / "state.pt").read_bytes()
    if fault == "full":
        fs.fill(leave_bytes=64 << 10)  # state.pt opens, torch.save fails half-way (its RuntimeError)
    else:
        fs.remount("ro")
    big = {**payload(s), "padding": torch.zeros(64 << 10)}  # 256 KiB
    expected = "no space left on device" if fault == "full" else "read-only file system"
    with pytest.raises(CheckpointError, match=f"(?i){expected}.*newest intact checkpoint is {fs.path}/step_00000001\\."):
        ck.save(big, 2)
    assert [p.name for p in ck.all()] == ["step_00000001"]
    assert (fs.path / "step_00000001" / "state.pt").read_bytes() == before
    assert not list(fs.path.glob(".tmp-*"))


def test_pruning_deletes_only_this_runs_checkpoints(tmp_path):
    s = make_state()
    Checkpointer(tmp_path, run_id="old").save(payload(s), 100)
    Checkpointer(tmp_path, run_id=None).save(payload(s), 90)  # no run id: written before ids existed
    ck = Checkpointer(tmp_path, keep_last=1, run_id="new")
    for step in (1, 2, 3):
        ck.save(payload(s), step)
    assert [p.name for p in ck.all()] == ["step_00000100", "step_00000090", "step_00000003"]


def test_no_wrapper_prefixes_in_saved_weights(tmp_path):
    s = make_state()
    s.models["net"] = torch.compile(s.models["net"])  # wraps as _orig_mod
    sd = payload(s)
    assert all(not k.startswith("_orig_mod.") for k in sd["models"]["net"])
