"""engine=deepspeed: deepspeed.initialize per (model, optimizer) pair, ZeRO stage 1/2/3, bf16/fp16.

The JSON config ("auto" values from the recipe config) is deepspeed_config.py; the checkpoint files
(ZeRO partitions, the weights_only check, full weights) are deepspeed_files.py. The recipe's calls
keep their meaning: `rt.backward` runs on the engine the loss reaches, `rt.step(opt)` on the engine
that owns `opt` every micro-batch (DeepSpeed updates at the accumulation boundary), and every rank
writes `save_checkpoint` into `step_N/deepspeed/<name>/` beside state.pt. A DeepSpeed checkpoint
resumes on the same world size only. Comparison with the other engines: docs/launch.md#engines.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from common import dist
from common.config import UserError
from common.engines.base import Engine, unwrap
from common.engines.deepspeed_config import SETTING, find_config, json_settings, resolve_config
# read_full_weights: the engine registry (common/engines/__init__.py) looks it up in this module.
from common.engines.deepspeed_files import TAG, check_partitions, read_full_weights, write_errors_kept  # noqa: F401


def _cast_inputs(dtype):
    def cast(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.to(dtype)
        if isinstance(x, (list, tuple)):
            return type(x)(cast(v) for v in x)
        if isinstance(x, dict):
            return {k: cast(v) for k, v in x.items()}
        return x

    def hook(module, args, kwargs):
        return cast(args), cast(kwargs)
    return hook


def _leaf_params(loss: torch.Tensor):
    """The parameters (autograd leaves that need a gradient) that `loss` depends on."""
    seen, todo = set(), [loss.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):  # AccumulateGrad: its variable is a leaf that requires grad
            yield fn.variable
        todo.extend(f for f, _ in fn.next_functions)


class DeepSpeedEngine(Engine):
    name = "deepspeed"
    # The JSON's content is compared, not its path (the same file may be edited): the stage and precision
    # decide the layout of the saved partitions; the rest (buckets, overlap, loss-scale window) takes effect.
    # (precision itself is fixed under DeepSpeed by its field's declaration in common/config.py.)
    fixed_settings = {f"{SETTING}zero_optimization.stage": "the ZeRO stage the partitions were saved with",
                      f"{SETTING}zero_optimization.sub_group_size": "how ZeRO-3 groups the saved partitions",
                      f"{SETTING}bf16.enabled": "the precision the partitions were saved with",
                      f"{SETTING}fp16.enabled": "the precision the partitions were saved with"}

    def __init__(self, cfg, env):
        # DeepSpeed picks its accelerator at import time; device=cpu must win on a GPU machine too.
        if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        super().__init__(cfg, env)
        self.config_path = find_config(cfg.deepspeed_config)
        self.ds_config = resolve_config(self.config_path, cfg, self.world_size)
        self.settings = json_settings(self.ds_config)
        if not torch.distributed.is_initialized():
            # DeepSpeed always talks through a process group, even a group of one (plain `python`).
            env.info.backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(env.info.backend, store=torch.distributed.HashStore(), rank=0,
                                                 world_size=1)
            dist.export_env(env.info)  # DeepSpeed insists on $LOCAL_RANK
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() == "cpu":
            # DeepSpeed's CPU backend JIT-compiles a C++ shared-memory all-reduce at its first use on a machine
            # (a C++ compiler, half a minute to minutes while other runs wait on its lock) and maps a 67 MB
            # /dev/shm buffer per rank that it never unlinks. Only DeepSpeed's inference (module_inject) calls
            # that all-reduce; training talks through torch.distributed (gloo).
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        if get_accelerator().device_name() != self.device.type:
            raise UserError(f"DeepSpeed runs on '{get_accelerator().device_name()}' but dtrain picked {self.device}; "
                            f"set DS_ACCELERATOR={self.device.type} or device={get_accelerator().device_name()}")
        self._deepspeed = deepspeed
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)  # DeepSpeed scales fp16 losses itself
        self.engines: dict[str, nn.Module] = {}  # optimizer name -> DeepSpeedEngine
        self._by_opt: dict[int, nn.Module] = {}
        self._by_param: dict[int, nn.Module] = {}

    def describe(self) -> str:
        c = self.ds_config
        precision = "bf16" if c["bf16"]["enabled"] else "fp16" if c["fp16"]["enabled"] else "fp32"
        return (f"deepspeed {self._deepspeed.__version__} {self.config_path.name}: ZeRO stage "
                f"{c.get('zero_optimization', {}).get('stage', 0)}, {precision}, train_batch_size {c['train_batch_size']} = "
                f"micro {c['train_micro_batch_size_per_gpu']} x accum {c['gradient_accumulation_steps']} x world {self.world_size}")

    # -- models ------------------------------------------------------------------------------
    def prepare(self, models, optims):
        """deepspeed.initialize for each optimizer and the one model whose parameters it holds."""
        owners = {id(p): name for name, m in models.items() for p in unwrap(m).parameters()}
        models = dict(models)
        for opt_name, opt in optims.items():
            names = {owners.get(id(p)) for g in opt.param_groups for p in g["params"]}
            if len(names) != 1 or None in names:
                raise UserError(f"engine=deepspeed needs each optimizer to update exactly one model "
                                f"(deepspeed.initialize takes one model and its optimizer); optimizer '{opt_name}' "
                                f"updates {sorted(map(str, names))}")
            (model_name,) = names
            if model_name in self.owned:
                raise UserError(f"engine=deepspeed: model '{model_name}' has two optimizers; DeepSpeed supports one")
            engine, *_ = self._deepspeed.initialize(model=unwrap(models[model_name]), optimizer=opt,
                                                    config=json.loads(json.dumps(self.ds_config)),
                                                    dist_init_required=False)
            if engine.bfloat16_enabled() or engine.fp16_enabled():
                # DeepSpeed keeps bf16/fp16 weights and turns autocast off inside its forward, so the
                # fp32 batches our loaders yield are cast at the module's door (as fp16.auto_cast does).
                unwrap(engine).register_forward_pre_hook(_cast_inputs(torch.bfloat16 if engine.bfloat16_enabled()
                                                                      else torch.float16), with_kwargs=True)
            models[model_name] = engine
            self.owned |= {model_name, opt_name}
            self.engines[opt_name] = engine
            self._by_opt[id(opt)] = engine
            self._by_param.update({id(p): engine for p in unwrap(engine).parameters()})
        return models, dict(optims)

    # -- optimisation ----------------------------------------------------------------------
    @contextlib.contextmanager
    def micro_step(self, i: int, n: int):
        self.micro, self.n_micro = i, n
        for engine in self.engines.values():
            engine.set_gradient_accumulation_boundary(self.last_micro)
        yield

    def backward(self, loss: torch.Tensor) -> None:
        """engine.backward now (loss scaling, 1/accumulation, ZeRO's gradient hooks), on the one
        engine whose parameters the loss reaches."""
        engines = list(self.engines.values())
        if len(engines) > 1:
            engines = list({id(e): e for e in (self._by_param.get(id(p)) for p in _leaf_params(loss)) if e}.values())
        if len(engines) != 1:
            raise RuntimeError(f"rt.backward(loss): under engine=deepspeed a loss must reach the parameters of "
                               f"exactly one model with an optimizer, this one reaches {len(engines)}; freeze the "
                               "others with rt.frozen(model)")
        engines[0].backward(loss)

    def step(self, optimizer) -> None:
        """engine.step() on every micro-batch: DeepSpeed updates weights (and clips, unscales,
        zeroes) only at the accumulation boundary."""
        engine = self._by_opt.get(id(optimizer))
        if engine is None:
            raise RuntimeError("rt.step got an optimizer that rt.prepare did not see")
        engine.step()

    def end_step(self) -> None:
        """Nothing: DeepSpeed updates its loss scale inside engine.step()."""

    def grad_norm(self, optimizer):
        """The global norm DeepSpeed computed at its last optimizer step (it reduces it over ranks and
        ZeRO partitions); None where its optimizer computes none (no ZeRO, no clipping)."""
        engine = self._by_opt.get(id(optimizer))
        return engine.get_global_grad_norm() if engine is not None else None

    # -- checkpoints -----------------------------------------------------------------------
    def save_shards(self, directory: Path) -> None:
        """Collective: every rank writes its ZeRO partition under directory/deepspeed/<name>/. A write that
        fails (this rank's disk full) is raised only after engine.save_checkpoint returned: it has barriers
        after the writes, where the other ranks would otherwise wait for this one until dist_timeout_s."""
        for name, engine in self.engines.items():
            with write_errors_kept(engine) as kept:
                engine.save_checkpoint(str(directory / "deepspeed" / name), tag=TAG, save_latest=False)
            if kept:
                raise kept[0]

    def load_shards(self, ckpt_dir: Path) -> None:
        ckpt_dir = Path(ckpt_dir)
        if ckpt_dir.is_file():
            ckpt_dir = ckpt_dir.parent
        for name, engine in self.engines.items():
            where = ckpt_dir / "deepspeed" / name
            check_partitions(where, self.world_size)
            path, _ = engine.load_checkpoint(str(where), tag=TAG, load_optimizer_states=True,
                                             load_lr_scheduler_states=False)
            if path is None:
                raise UserError(f"DeepSpeed could not load its checkpoint from {where}")
