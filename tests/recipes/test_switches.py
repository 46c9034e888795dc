"""Each training-quality switch changes what it should (and only that): none is silently ignored."""
import pytest
import torch

from support.inprocess import run_inprocess
from support.runs import run_recipe
from support.outputs import final_weights, metrics

BASE = ["train.max_steps=4", "train.log_every_steps=1", "train.eval_every_steps=4", "train.ckpt_every_steps=4",
        "optim.weight_decay=0.05", "data.augment=false"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    run_inprocess("resnet_cifar", f"out_dir={out}", *BASE)
    return out


def run(tmp_path, *switch):
    out = tmp_path / "run"
    run_inprocess("resnet_cifar", f"out_dir={out}", *BASE, *switch)
    return out


def first(out, split, key):
    return next(m[key] for m in metrics(out) if m["split"] == split)


def last(out, split, key):
    return [m[key] for m in metrics(out) if m["split"] == split][-1]


def same_weights(a, b):
    wa, wb = final_weights(a), final_weights(b)
    return all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("switch", ["label_smoothing=0.1", "data.mixup_alpha=0.2", "data.cutmix_alpha=1.0",
                                    "data.augment=true"])
def test_training_side_switches_change_the_weights(switch, baseline, tmp_path):
    out = run(tmp_path, switch)
    # Same seed, same samples, same initial weights: only the switch differs, and training is
    # deterministic on CPU, so equal weights would mean the switch was ignored.
    assert not same_weights(out, baseline)


@pytest.mark.parametrize("switch", ["train.ema_decay=0.5", "train.tta_flip=true"])
def test_eval_side_switches_change_eval_but_not_training(switch, baseline, tmp_path):
    out = run(tmp_path, switch)
    assert same_weights(out, baseline)
    assert last(out, "val", "loss") != pytest.approx(last(baseline, "val", "loss"), rel=1e-6)


def test_weight_decay_on_norms_and_biases_changes_weights(baseline, tmp_path):
    out = run(tmp_path, "optim.decay_norm_and_bias=true")
    wa, wb = final_weights(out), final_weights(baseline)
    bn = "stem.1.weight"
    assert not torch.equal(wa[bn], wb[bn])


def test_onecycle_schedule_is_used(baseline, tmp_path):
    out = run(tmp_path, "optim.schedule=onecycle")
    lrs = [m["lr"] for m in metrics(out) if m["split"] == "train"]
    assert lrs != [m["lr"] for m in metrics(baseline) if m["split"] == "train"]
    assert max(lrs) <= 0.05 + 1e-9  # peaks at optim.lr


def test_ema_every_steps_is_the_lerp_of_the_weights_at_its_update_steps(tmp_path):
    """A real run with train.ema_every_steps=3 (a checkpoint after every step): its EMA is updated after
    steps 3 (the first update: a copy) and 6, and holds still in between."""
    from common.formats.checkpoint import load_file
    out = tmp_path / "run"
    run_inprocess("mnist_mlp", f"out_dir={out}", "model.hidden=[32]", "train.max_steps=7", "train.ckpt_every_steps=1",
                  "ckpt.keep_last=10", "train.eval_every_steps=7", "train.ema_decay=0.8", "train.ema_every_steps=3")
    ckpt = {k: load_file(out / "checkpoints" / f"step_{k:08d}") for k in range(1, 8)}
    weights = {k: c["models"]["net"] for k, c in ckpt.items()}
    ema = {k: {name[len("module."):]: v for name, v in c["ema"]["net"].items() if name != "n_averaged"}
           for k, c in ckpt.items()}
    for k in (3, 4, 5):
        assert all(torch.equal(ema[k][n], weights[3][n]) for n in weights[3])
    for k in (6, 7):
        for n, w in weights[6].items():
            assert torch.equal(ema[k][n], torch.lerp(weights[3][n], w, 0.2)), n  # 0.8 * ema + 0.2 * weights
    assert [int(ckpt[k]["ema"]["net"]["n_averaged"]) for k in range(1, 8)] == [0, 0, 1, 1, 1, 2, 2]
    assert not torch.equal(ema[7]["1.weight"], weights[7]["1.weight"])  # the EMA is not the weights


def test_ema_decay_zero_equals_the_weights():
    from common.train.state import make_ema
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = make_ema(model, 0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        model(torch.randn(8, 3)).sum().backward()
        opt.step()
        ema.update_parameters(model)
    for (k, a), b in zip(model.state_dict().items(), ema.module.state_dict().values()):
        assert torch.equal(a, b), k


def test_mix_targets_are_soft_and_sum_to_one():
    from common.data.mixing import batch_mix
    from common.tasks.classifier import ClassifierDataConfig as DataConfig
    # Seeded per (seed, epoch, step): seed 1, step 0 has no zero-area CutMix box; x[0] leads the batch.
    for cfg in (DataConfig(mixup_alpha=0.4), DataConfig(cutmix_alpha=1.0), DataConfig(mixup_alpha=0.2, cutmix_alpha=1.0)):
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
        mx, my = batch_mix(cfg, 10, seed=1)(x.clone(), y, 0, 0)
        assert my.shape == (15, 10) and torch.allclose(my.sum(1), torch.ones(15))
        assert not torch.equal(mx, x[1:]) and (my.max(1).values < 1).any()
    assert batch_mix(DataConfig(), 10, seed=1) is None


def _runtime(**train):
    from common.config import BaseConfig, apply
    from common.engines import make_engine
    from common.env import Env
    cfg = apply(BaseConfig(), {"device": "cpu", "engine": "ddp", **{f"train.{k}": v for k, v in train.items()}}, "test")
    return make_engine(cfg, Env(cfg))


def test_channels_last_reaches_model_and_batches():
    rt = _runtime(channels_last=True)
    model = rt.place(torch.nn.Conv2d(3, 8, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    from common.data.classifier_data import TensorEvalLoader
    ld = TensorEvalLoader(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                          [0.5] * 3, [0.2] * 3, batch_size=4, world=1, rank=0, memory_format=rt.memory_format)
    x, _ = next(iter(ld))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@pytest.mark.slow
def test_compile_switch_compiles_and_matches_eager():
    rt = _runtime(compile=True)
    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    compiled = rt.place(eager)
    assert compiled is not eager and compiled._orig_mod is eager
    x = torch.randn(4, 8)
    torch.testing.assert_close(compiled(x), eager(x))


def test_sync_bn_on_cpu_is_a_clear_error_not_ignored():
    """SyncBatchNorm has no CPU kernel; the switch must fail loudly rather than do nothing.
    (With world size 1 there is nothing to synchronize, so only a multi-process CPU run errors.)"""
    p = run_recipe("resnet_cifar", "train.sync_bn=true", "train.max_steps=1", nproc=2, check=False)
    assert p.returncode != 0 and "train.sync_bn=true needs CUDA devices" in p.stderr + p.stdout
