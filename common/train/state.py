"""TrainState: everything a run needs to continue exactly where it stopped.

Models, optimizers, LR schedulers, EMA copies, counters, and each rank's RNG state
(the engine adds its own: loss scaler, shards). `state_dict()` holds tensors and plain Python values only, so a
checkpoint loads with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

from common import dist
from common.config import START_OVER, UserError, seed_bits
from common.engines.base import full_tensor, unwrap
from common.train.init import init_from
from common.train.optim import Plateau, build_optimizer, build_scheduler

FORMAT_VERSION = 1


class StateMismatch(UserError):
    """A checkpoint that cannot belong to this run; the message says why."""


RAMP_POWER = 2 / 3  # ema_warmup=ramp: timm's ModelEmaV3 warm-up, decay 1 - step^-power (0 at step 1, 0.999 at 31,623)


class EMA(AveragedModel):
    """ema = decay * ema + (1 - decay) * weights, buffers (BatchNorm statistics) included.

    torch's AveragedModel with the same state_dict (module.* and n_averaged), but its update
    reads no device tensor on the host: AveragedModel tests `n_averaged == 0` and `> 0` on
    every update, two host-device syncs per step on a GPU. Here whether the copy has started
    is mirrored on the host, read from n_averaged once after construction or a load.
    after_step() updates every `every` optimizer steps, and its decay and restarts (`warmup`)
    are functions of the step alone, so a resumed run repeats them (docs/usage.md, EMA).
    """

    def __init__(self, model: nn.Module, decay: float, every: int = 1, warmup: str = "none", lr_warmup_steps: int = 0):
        super().__init__(model, use_buffers=True)
        self.decay, self.every, self.warmup, self.lr_warmup_steps = decay, every, warmup, lr_warmup_steps
        self._started: bool | None = False

    def after_step(self, model: nn.Module, step: int) -> None:
        """The update due after optimizer step `step` (counted from 1 over the run), if one is."""
        if step % self.every:
            return
        decay = min(self.decay, 1 - step ** -RAMP_POWER) if self.warmup == "ramp" else self.decay
        # restart (torchvision): copy through the LR warm-up, and at the first update after it.
        self.update_parameters(model, decay, copy=self.warmup == "restart" and step - self.every <= self.lr_warmup_steps)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module, decay: float | None = None, copy: bool = False) -> None:
        """One update with `decay` (None: self.decay); copy=True (and the first update) copies the weights."""
        if self._started is None:
            self._started = bool(self.n_averaged > 0)  # once per load, not per step
        decay = self.decay if decay is None else decay
        mine = list(chain(self.module.parameters(), self.module.buffers()))
        # A sharded engine (fsdp) holds DTensors: the EMA stays a whole copy on every rank (an all-gather).
        theirs = [full_tensor(t.detach()) for t in chain(model.parameters(), model.buffers())]
        if copy or not self._started:  # the first update copies, as AveragedModel does
            for a, b in zip(mine, theirs, strict=True):
                a.copy_(b)
        else:
            # An engine may hold the model in bf16/fp16 (DeepSpeed); the EMA stays in its own dtype.
            floats = [(a, b.to(a.dtype)) for a, b in zip(mine, theirs, strict=True) if a.is_floating_point()]
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], 1 - decay)
            for a, b in zip(mine, theirs, strict=True):
                if not a.is_floating_point():  # BatchNorm's num_batches_tracked: a count, not averaged
                    a.copy_(b)
        self.n_averaged += 1
        self._started = True

    def load_state_dict(self, *args, **kwargs):
        out = super().load_state_dict(*args, **kwargs)
        self._started = None
        return out


def make_ema(model: nn.Module, decay: float, every: int = 1, warmup: str = "none", lr_warmup_steps: int = 0) -> EMA:
    return EMA(unwrap(model), decay, every, warmup, lr_warmup_steps)


def ema_settings(cfg) -> dict:
    """make_ema's keywords from cfg.train (and the LR warm-up, for ema_warmup=restart)."""
    t = cfg.train
    return dict(decay=t.ema_decay, every=t.ema_every_steps, warmup=t.ema_warmup, lr_warmup_steps=cfg.optim.warmup_steps)


def no_early_stop() -> dict:
    """The early-stopping count of a fresh run (common/train/stopping.py): the metric it counts, its best value,
    evaluations since it improved, and the step the run stopped at (None: it did not), why, and whether a
    sweep's pruner stopped it (common/train/trial.py) rather than the count."""
    return {"metric": None, "best": None, "bad": 0, "stopped_step": None, "reason": "", "pruned": False}


@dataclass
class TrainState:
    models: dict[str, nn.Module]
    optims: dict[str, torch.optim.Optimizer]
    scheds: dict[str, torch.optim.lr_scheduler.LRScheduler] = field(default_factory=dict)
    ema: dict[str, EMA] = field(default_factory=dict)
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # global batches of the current epoch already consumed
    best: float | None = None  # best value of cfg.ckpt.best_metric so far
    early_stop: dict = field(default_factory=no_early_stop)  # the early-stopping count (no_early_stop)

    def update_ema(self, step: int) -> None:
        """The EMA updates due after optimizer step `step` (counted from 1)."""
        for name, ema in self.ema.items():
            ema.after_step(unwrap(self.models[name]), step)

    def eval_model(self, name: str) -> nn.Module:
        """The weights to evaluate: the EMA copy if there is one, else the plain model."""
        return self.ema[name].module if name in self.ema else unwrap(self.models[name])

    # -- serialization ---------------------------------------------------------------------
    def state_dict(self, config: dict, recipe: str, owned: set[str] = frozenset()) -> dict:
        """`owned`: names of models/optimizers an engine saves in its own format (rt.owned)."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        return {
            "format_version": FORMAT_VERSION,
            "recipe": recipe,
            "config": config,
            "world_size": dist.world_size(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "best": self.best,
            "early_stop": dict(self.early_stop),
            "models": {k: unwrap(m).state_dict() for k, m in self.models.items() if k not in owned},
            "optims": {k: o.state_dict() for k, o in self.optims.items() if k not in owned},
            "engine_owned": sorted(owned),
            "scheds": {k: s.state_dict() for k, s in self.scheds.items()},
            "ema": {k: e.state_dict() for k, e in self.ema.items()},
            # Every rank's RNG (dropout, etc.) so each continues its own stream.
            "rng": dist.all_gather_object(rng),
        }

    def load_state_dict(self, sd: dict, recipe: str, owned: set[str] = frozenset()) -> list[str]:
        """Restore in place (the LR schedulers excepted: see common/train/resume.py); returns warnings
        (e.g. RNG not restorable on a new world size)."""
        if sd.get("format_version", 0) > FORMAT_VERSION:
            raise StateMismatch(f"checkpoint format version {sd['format_version']} is newer than this code "
                                f"understands ({FORMAT_VERSION}): update dtrain, or {START_OVER}")
        if sd.get("recipe") != recipe:
            raise StateMismatch(f"checkpoint was written by recipe '{sd.get('recipe')}', not '{recipe}': "
                                f"point out_dir or resume at a run of this recipe, or {START_OVER}")
        saved_owned = set(sd.get("engine_owned", []))
        if saved_owned != set(owned):
            saved = sd.get("config", {}).get("engine", "deepspeed") if saved_owned else "ddp/accelerate"
            engines = (f"engine={saved}", "engine=deepspeed/fsdp" if owned else "engine=ddp/accelerate")
            raise StateMismatch(
                f"checkpoint was written with {engines[0]}, this run uses {engines[1]}; DeepSpeed and FSDP keep "
                "weights and optimizer state in their own per-rank format: resume with the checkpoint's engine, or "
                "start a new run from its weights (init_from=RUN_DIR, or a file from --export RUN_DIR)")
        for kind, mine in (("models", self.models), ("optims", self.optims)):
            if set(sd[kind]) != set(mine) - owned:
                raise StateMismatch(f"checkpoint has {kind} {sorted(sd[kind])}, this recipe has {sorted(mine)}")
        for k, m in self.models.items():
            if k in owned:
                continue
            try:
                unwrap(m).load_state_dict(sd["models"][k])
            except RuntimeError as e:
                raise StateMismatch(f"checkpoint weights for '{k}' do not fit this model (another config or "
                                    f"architecture?): {str(e).splitlines()[0]} ... use the matching model config, or "
                                    f"{START_OVER}") from None
        for k, o in self.optims.items():
            if k not in owned:
                try:
                    o.load_state_dict(sd["optims"][k])
                except ValueError as e:  # another number or size of parameter groups
                    raise StateMismatch(f"checkpoint optimizer state for '{k}' does not fit this optimizer ({e}); "
                                        "use the checkpoint's model and optimizer config, or start a new out_dir "
                                        "with init_from= its weights") from None
        # Schedulers are not loaded: common/train/resume.py positions this run's schedule at the step. A plateau
        # schedule's reductions so far are history, not a function of the step: they are loaded.
        for k, sched in self.scheds.items():
            if isinstance(sched, Plateau) and k in sd.get("scheds", {}):
                sched.load_progress(sd["scheds"][k])
        for k, e in self.ema.items():
            if k in sd["ema"]:
                e.load_state_dict(sd["ema"][k])
        self.step, self.epoch, self.batch_in_epoch, self.best = sd["step"], sd["epoch"], sd["batch_in_epoch"], sd["best"]
        self.early_stop = {**no_early_stop(), **sd.get("early_stop", {})}
        warnings = []
        if len(sd["rng"]) == dist.world_size():
            rng = sd["rng"][dist.rank()]
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        else:
            warnings.append(f"checkpoint was written with {len(sd['rng'])} processes, this run has "
                            f"{dist.world_size()}: data order and position continue exactly, but per-rank "
                            "random streams (dropout) restart from the seed")
            torch.manual_seed(seed_bits(sd["config"]["seed"] + 1_000 * sd["step"] + dist.rank()))
        return warnings


def build_state(cfg, rt, models: dict[str, nn.Module], total_steps: int, ema: tuple[str, ...] = ()) -> TrainState:
    """Place each model, give it an optimizer and LR schedule from cfg.optim, an EMA copy for the
    names in `ema` (when train.ema_decay > 0), and let the engine wrap them."""
    models = {k: rt.place(m) for k, m in models.items()}
    init_from(cfg, rt, models)  # weights of another run, before the engine wraps (and copies) them
    optims = {k: build_optimizer(cfg.optim, m) for k, m in models.items()}
    scheds = {k: build_scheduler(cfg.optim, o, total_steps) for k, o in optims.items()}
    emas = {k: make_ema(models[k], **ema_settings(cfg)) for k in ema if cfg.train.ema_decay > 0}
    models, optims = rt.prepare(models, optims)
    return TrainState(models=models, optims=optims, scheds=scheds, ema=emas)
