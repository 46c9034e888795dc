"""engine=deepspeed: deepspeed.initialize per (model, optimizer) pair, ZeRO stage 1/2/3, bf16/fp16.

The config is a JSON file from launch/deepspeed/ (`deepspeed_config=`), JSON with `//` comments.
Values written "auto" come from the recipe config, so one YAML drives every engine:

    train_batch_size                 train.batch_size (global)
    train_micro_batch_size_per_gpu   train.batch_size / (world size x train.grad_accum)
    gradient_accumulation_steps      train.grad_accum
    gradient_clipping                train.clip_grad_norm
    bf16.enabled / fp16.enabled      precision=bf16 / precision=fp16

A number that contradicts the recipe config is an error. The optimizer and LR schedule stay the
recipe's (`optim.*`): DeepSpeed wraps the recipe's torch optimizer, so "optimizer"/"scheduler"
sections in the JSON are refused.

How the recipe's calls map, unchanged train_step:
  rt.prepare          deepspeed.initialize for each (model, its optimizer); returns the engines
  rt.backward(loss)   engine.backward(loss) on the engine whose parameters the loss reaches (a
                      GAN's D loss reaches D only, its G loss G only: D is frozen in the G step)
  rt.step(opt)        engine.step() on the engine that owns `opt`, every micro-batch (DeepSpeed
                      counts micro-steps and updates only at the accumulation boundary)
  micro_step          engine.set_gradient_accumulation_boundary(last micro-batch)
  checkpoints         every rank writes engine.save_checkpoint into the checkpoint directory
                      (checkpoints/step_N/deepspeed/<name>/), checksummed in MANIFEST.json with
                      state.pt (counters, schedulers, RNG); resume=auto restores both.
A DeepSpeed checkpoint resumes with the same world size (ZeRO partitions are per rank);
deepspeed/<name>/zero_to_fp32.py in the checkpoint exports plain fp32 weights.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
from pathlib import Path

import torch
import torch.nn as nn

from common import dist
from common.config import UserError, flatten
from common.engines.base import Engine, unwrap
from common.formats.checkpoint import load_file, refuse_code

REPO = Path(__file__).resolve().parents[2]
# The JSON keys filled from the recipe config (where each comes from).
FROM_RECIPE = {"train_batch_size": "train.batch_size", "train_micro_batch_size_per_gpu": "train.batch_size / (world x grad_accum)",
               "gradient_accumulation_steps": "train.grad_accum", "gradient_clipping": "train.clip_grad_norm"}
SETTING = "deepspeed_config:"  # prefix of a setting read from the JSON, as resume messages show it
TAG = "state"  # DeepSpeed's tag (sub-folder) inside checkpoints/step_N/deepspeed/<name>/
# The classes (by name) DeepSpeed 0.19 pickles into its checkpoint files besides tensors and plain values,
# found by inspecting real ZeRO-2 checkpoints (torch.serialization.get_unsafe_globals_in_checkpoint).
# Each is plain data: an Enum, a dataclass, loss scalers whose state is attributes. Allowing them lets
# weights_only=True construct them, nothing more; any other global in a file is refused.
SAFE_TYPES = ("deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.runtime.fp16.loss_scaler.LossScaler",
              "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler", "deepspeed.utils.tensor_fragment.fragment_address")


def _strip_comments(text: str) -> str:
    """Remove // comments outside JSON strings."""
    return re.sub(r'("(?:\\.|[^"\\])*")|//[^\n]*', lambda m: m.group(1) or "", text)


def find_config(path: str) -> Path:
    p = Path(path)
    for candidate in (p, REPO / p):
        if candidate.is_file():
            return candidate
    raise UserError(f"deepspeed_config={path!r} not found (looked in the working directory and {REPO}); "
                    f"the configs shipped are {', '.join(sorted(q.name for q in (REPO / 'launch/deepspeed').glob('*.json')))}")


def resolve_config(path: Path, cfg, world_size: int) -> dict:
    """The JSON with "auto" filled from the recipe config; contradictions are errors."""
    try:
        ds = json.loads(_strip_comments(path.read_text()))
    except ValueError as e:
        raise UserError(f"deepspeed_config {path} is not valid JSON (after removing // comments): {e}") from None
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise UserError(f"deepspeed_config {path} has an '{key}' section; dtrain builds the optimizer and LR "
                            "schedule from optim.* in the recipe config: remove the section")
    t = cfg.train
    wanted = {"train_batch_size": t.batch_size, "train_micro_batch_size_per_gpu": t.batch_size // (world_size * t.grad_accum),
              "gradient_accumulation_steps": t.grad_accum, "gradient_clipping": t.clip_grad_norm}
    for key, value in wanted.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise UserError(f"deepspeed_config {path} sets {key}={ds[key]} but the recipe config gives {value} "
                            f"({FROM_RECIPE[key]}): write \"auto\" in the JSON, or change the recipe config")
    for dtype in ("bf16", "fp16"):
        section = ds.setdefault(dtype, {})
        enabled = section.get("enabled", "auto")
        if enabled == "auto":
            section["enabled"] = cfg.precision == dtype
        elif bool(enabled) != (cfg.precision == dtype):
            raise UserError(f"deepspeed_config {path} sets {dtype}.enabled={enabled} but precision={cfg.precision}: "
                            f"write \"auto\" in the JSON, or set precision={dtype if enabled else 'fp32'}")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage == 3 and t.ema_decay > 0:
        raise UserError("train.ema_decay needs the full weights on every rank after each step; ZeRO stage 3 "
                        "partitions them: use ZeRO-1/2 (launch/deepspeed/zero2.json) or train.ema_decay=0")
    if t.activation_checkpointing:
        raise UserError("train.activation_checkpointing=true is not wired for engine=deepspeed (ZeRO-3 gathers "
                        "parameters in module hooks that recomputation bypasses; DeepSpeed has its own "
                        "activation_checkpointing section): use engine=fsdp or ddp, or set it to false")
    if t.compile:
        raise UserError("train.compile=true is not wired for engine=deepspeed (DeepSpeed has its own "
                        "compile: engine.compile()); use train.compile=false")
    return ds


def json_settings(ds: dict) -> dict:
    """The resolved JSON as flat settings ("deepspeed_config:zero_optimization.stage": 2), less the keys
    filled from train.* (compared as those keys). The stage is recorded even when the JSON leaves it out."""
    flat = flatten({k: v for k, v in ds.items() if k not in FROM_RECIPE}, SETTING)
    flat.setdefault(f"{SETTING}zero_optimization.stage", 0)
    return flat


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


@contextlib.contextmanager
def _write_errors_kept(engine):
    """Within: the engine's file writes (its checkpoint_engine's save and makedirs, the recovery script
    copy) keep their first failure in the yielded list instead of raising it, and skip once one failed."""
    kept: list[BaseException] = []
    inner, copy = engine.checkpoint_engine, getattr(engine, "_copy_recovery_script", None)  # rank 0's zero_to_fp32.py

    def keep(fn):
        def call(*args, **kwargs):
            if kept:
                return None
            try:
                return fn(*args, **kwargs)
            except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
                kept.append(e)
        return call

    class Keeping:  # the checkpoint engine, but for these two
        def __getattr__(self, name):
            return getattr(inner, name)

    keeping = Keeping()
    keeping.save, keeping.makedirs = keep(inner.save), keep(inner.makedirs)
    engine.checkpoint_engine = keeping
    if copy is not None:
        engine._copy_recovery_script = keep(copy)
    try:
        yield kept
    finally:
        engine.checkpoint_engine = inner
        if copy is not None:
            del engine._copy_recovery_script  # the class's method again


def _safe_types() -> list[type]:
    found = []
    for name in SAFE_TYPES:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # another DeepSpeed version: that class is refused like any other
            pass
    return found


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
            with _write_errors_kept(engine) as kept:
                engine.save_checkpoint(str(directory / "deepspeed" / name), tag=TAG, save_latest=False)
            if kept:
                raise kept[0]

    def load_shards(self, ckpt_dir: Path) -> None:
        ckpt_dir = Path(ckpt_dir)
        if ckpt_dir.is_file():
            ckpt_dir = ckpt_dir.parent
        for name, engine in self.engines.items():
            where = ckpt_dir / "deepspeed" / name
            parts = list((where / TAG).glob("*zero_pp_rank_*optim_states.pt"))
            if parts and len(parts) != self.world_size:
                raise UserError(f"{where} holds ZeRO partitions for {len(parts)} ranks, this run has {self.world_size}: "
                                "resume with the same world size, or export weights with its zero_to_fp32.py and "
                                "start a new run from them")
            # DeepSpeed loads with weights_only=False: check every file it may read first.
            refuse_code(sorted(f for f in (where / TAG).rglob("*") if f.is_file()), _safe_types())
            path, _ = engine.load_checkpoint(str(where), tag=TAG, load_optimizer_states=True,
                                             load_lr_scheduler_states=False)
            if path is None:
                raise UserError(f"DeepSpeed could not load its checkpoint from {where}")


def read_full_weights(ckpt_dir) -> dict[str, dict[str, torch.Tensor]]:
    """{model name: full fp32 state_dict} of a checkpoint written under engine=deepspeed, on this process:
    the ZeRO-1/2/3 partitions of every rank gathered by DeepSpeed's zero_to_fp32, after each of its files
    passed the weights_only check (refuse_code; zero_to_fp32 itself unpickles with full power). Collective
    when a process group is up: call it on every rank."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt_dir = Path(ckpt_dir)
    out = dict(load_file(ckpt_dir)["models"])  # models DeepSpeed did not own, if any
    for where in sorted(p for p in (ckpt_dir / "deepspeed").iterdir() if p.is_dir()):
        refuse_code(sorted(f for f in (where / TAG).rglob("*") if f.is_file()), _safe_types())
        with contextlib.redirect_stdout(None):  # it prints a line per tensor group
            out[where.name] = get_fp32_state_dict_from_zero_checkpoint(str(where), tag=TAG)
    return out
