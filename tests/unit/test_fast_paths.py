"""Fast paths that keep the host from waiting on the device: the EMA update, the optimizer
kernels, channels_last by default on CUDA, and the non-blocking preemption agreement.

The CUDA halves (no host-device sync per step, fused kernels) run only where a GPU is
visible; the CPU halves check that each fast path computes what the slow one did.
"""
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from common.config import BaseConfig, OptimConfig, apply
from common.train.optim import build_optimizer, kernel_options
from common.train.state import EMA, make_ema
from support.runs import free_port

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def _train(model, emas, steps, seed=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        model(torch.randn(16, 4, generator=g)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        for e in emas:
            e.update_parameters(model)


def test_ema_matches_torch_averaged_model():
    model = _net()
    ours = make_ema(model, 0.9)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    _train(model, [ours, ref], 7)
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert list(mine) == list(theirs)  # same checkpoint layout as AveragedModel
    for k, v in theirs.items():
        if v.is_floating_point():
            torch.testing.assert_close(mine[k], v, rtol=0, atol=1e-6, msg=k)
    assert int(mine["n_averaged"]) == 7
    # the EMA is not the weights: the test would notice an EMA that only copies
    assert not torch.allclose(mine["module.0.weight"], model.state_dict()["0.weight"])


def test_ema_loaded_from_a_checkpoint_continues_instead_of_restarting():
    model = _net()
    a = make_ema(model, 0.9)
    _train(model, [a], 3)
    b = EMA(model, 0.9)  # a fresh copy, as a resumed run builds it
    b.load_state_dict(a.state_dict())
    _train(model, [a, b], 2, seed=2)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k  # a restart would have copied the weights instead of averaging


def test_optimizer_kernels_foreach_on_cpu():
    model = _net()
    assert kernel_options([{"params": list(model.parameters())}]) == {"foreach": True}
    for name in ("sgd", "adamw", "adam"):
        opt = build_optimizer(OptimConfig(name=name), model)
        assert opt.defaults["foreach"] and not opt.defaults.get("fused"), name


def test_channels_last_auto_is_off_on_cpu():
    from common.env import Env
    cfg = apply(BaseConfig(), {"device": "cpu"}, "test")
    assert cfg.train.channels_last == "auto"
    assert Env(cfg).memory_format == torch.contiguous_format


@cuda
def test_cuda_defaults_fused_optimizer_and_channels_last():
    from common.env import Env
    model = _net().cuda()
    for name in ("sgd", "adamw"):
        assert build_optimizer(OptimConfig(name=name), model).defaults.get("fused"), name
    for name in ("lamb", "lars", "lion"):  # timm's have no fused kernel: their foreach one
        defaults = build_optimizer(OptimConfig(name=name), model).defaults
        assert defaults["foreach"] and "fused" not in defaults, name
    cfg = apply(BaseConfig(), {"device": "cuda"}, "test")
    assert Env(cfg).memory_format == torch.channels_last


@cuda
def test_cuda_ema_update_and_fp16_step_do_not_sync():
    model = _net().cuda()
    ema = make_ema(model, 0.99)
    opt = build_optimizer(OptimConfig(name="adamw", lr=1e-3), model)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(16, 4, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        ema.update_parameters(model)

    step()  # first update copies
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# -- preemption agreement across real processes (gloo) ----------------------------------------
def _agree_worker(rank, port, signalled_rank, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist
    from common.train.preempt import Preemption

    class Rt:
        world_size, device = 2, torch.device("cpu")

    dist.init_process_group("gloo", rank=rank, world_size=2)
    p = Preemption()
    try:
        seen = [p.agreed(Rt)]  # check 1: nobody signalled yet
        if rank == signalled_rank:
            p.flag = True  # as the signal handler does
        seen.append(p.agreed(Rt))  # check 2: the flag is shared now, the result read at check 3
        seen.append(p.agreed(Rt))
        out[rank] = seen
        dist.barrier()
    finally:
        p.restore()
        dist.destroy_process_group()


def test_preemption_flag_of_one_rank_stops_every_rank_one_check_later():
    out = mp.Manager().dict()
    mp.spawn(_agree_worker, args=(free_port(), 1, out), nprocs=2)
    assert out[0] == out[1] == [False, False, True]


# -- where an in-memory dataset lives ----------------------------------------------------------
def test_dataset_lives_on_the_gpu_only_when_it_fits():
    from common.data.classifier_data import storage_device
    gpu, gib = torch.device("cuda", 0), 2**30
    assert storage_device(True, gpu, 1 * gib, free_bytes=40 * gib) == gpu
    assert storage_device(True, gpu, 11 * gib, free_bytes=40 * gib) == torch.device("cpu")  # > a quarter
    assert storage_device(False, gpu, 1, free_bytes=40 * gib) == torch.device("cpu")  # data.in_memory=false
    assert storage_device(True, torch.device("cpu"), 1) == torch.device("cpu")


def _loaders(device, storage, **kw):
    from common.data.classifier_data import TensorEvalLoader, TensorTrainLoader
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(50) % 10
    train = TensorTrainLoader(x, y, [0.5] * 3, [0.25] * 3, global_batch=8, world=2, rank=1, accum=2, seed=3,
                              augment=True, device=device, storage=storage, **kw)
    ev = TensorEvalLoader(x, y, [0.5] * 3, [0.25] * 3, batch_size=8, world=2, rank=1, device=device, storage=storage)
    return train, ev


def _batches(train, ev):
    out = [t.cpu() for step in train for mb in step for t in mb]
    return out + [t.cpu() for b in ev for t in b]


@cuda
def test_host_stored_dataset_gives_the_batches_of_a_gpu_stored_one():
    on_gpu = _batches(*_loaders("cuda", "cuda", drop_last=False))
    on_host = _batches(*_loaders("cuda", "cpu", drop_last=False))
    assert len(on_gpu) == len(on_host)
    for a, b in zip(on_gpu, on_host):
        assert torch.equal(a, b)


def test_cpu_loader_batches_unchanged_by_an_explicit_storage():
    ref = _batches(*_loaders("cpu", None, drop_last=False))
    assert all(torch.equal(a, b) for a, b in zip(ref, _batches(*_loaders("cpu", "cpu", drop_last=False))))
    assert len(ref) == 2 * 2 * 7 + 2 * 7  # train: 7 steps (the last wrapped) x 2 micro-batches; eval: 7 of 25 images


def test_ema_keeps_its_dtype_when_an_engine_holds_the_model_in_bf16():
    model = _net()
    ema = make_ema(model, 0.5)  # built before the engine converts the model, as in build_state
    ema.update_parameters(model)  # first update: a copy
    start = ema.module[0].weight.clone()
    model.to(torch.bfloat16)
    ema.update_parameters(model)
    assert ema.module[0].weight.dtype == torch.float32
    expected = 0.5 * start + 0.5 * model[0].weight.float()
    torch.testing.assert_close(ema.module[0].weight, expected)
