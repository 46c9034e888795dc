"""Config: dataclass schema <- recipe YAML <- each --config FILE in order <- dotted CLI overrides.

The dataclasses are the schema: each field holds its default, its `--help` line (the trailing comment),
its range and its roles on resume and after training (`setting(...)`, common/fields.py), so adding a key
is one line. Unknown keys, wrong types and values out of range are errors naming the key and the fix
(common/values.py). The command line and YAML files (layering, base:, --help) are common/cli.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Also imported from here by the rest of the code: the errors, and what declares, reads and sets fields.
from common.errors import ConfigError, UserError  # noqa: F401
from common.fields import FLOAT32_MAX, flatten, ranged, ranges, schema  # noqa: F401
from common.fields import APPLIED, IGNORED, NOT_COMPARED, OWN_FORMAT, Fixed, setting
from common.values import apply, dump_yaml, from_dict, to_dict, type_name  # noqa: F401

# How to start over where a run's checkpoints exist (resume=none alone is refused there: common/train/rundir.py).
START_OVER = "start over in a new out_dir, or here with resume=none overwrite=true (which moves this run's files aside)"


# ----------------------------------------------------------------------------- ranges

# Adam divides lr by 1 - beta1 (at least 2**-53 for a float below 1): the quotient must fit float32 too.
LR_MAX = FLOAT32_MAX * 2**-53
SEED_MAX = 2**64 - 1  # torch.manual_seed and torch.Generator take 64 bits


def seed_bits(value: int) -> int:
    """A seed derived from `seed` (seed * k + epoch, ...) folded into torch's 64 bits: unchanged below 2**64."""
    return value % (SEED_MAX + 1)


# What a checkpoint's settings decide, named when a resume that changes one is refused.
DATASET = Fixed("the dataset")
MODEL = Fixed("the model (the checkpoint's weights have its shape)")


@dataclass
class DataConfig:
    name: str = setting("fashion_mnist", resume=DATASET)  # mnist | fashion_mnist | cifar10 | cifar100 | synthetic
    root: str = setting("data", evaluate=APPLIED, read_when="data.name=mnist")  # dataset directory (relative to the working directory or absolute)
    download: bool = setting(False, evaluate=APPLIED, read_when="data.name=mnist")  # fetch the dataset with torchvision if missing (needs internet)
    augment: bool = setting(False, evaluate=IGNORED)  # random crop (padding 4) + horizontal flip, done on the device
    drop_last: bool = setting(True, evaluate=IGNORED)  # train: drop the last incomplete global batch (False: keep it, padded to equal shards)
    in_memory: bool = setting(True, evaluate=APPLIED)  # keep the dataset on the GPU when it fits (docs/data.md), else in host memory; false = host
    synthetic_train: int = ranged(4096, ge=1, resume=DATASET)  # synthetic dataset: number of training samples
    synthetic_test: int = ranged(1024, ge=1, resume=DATASET)  # synthetic dataset: number of test samples
    synthetic_shape: list[int] = ranged(factory=lambda: [1, 28, 28], length=3, ge=1, resume=DATASET)  # synthetic dataset: C, H, W
    synthetic_classes: int = ranged(10, ge=1, resume=DATASET)  # synthetic dataset: number of classes


@dataclass
class TrainConfig:
    epochs: int = ranged(1, ge=0, read_when="train.max_steps=0")  # passes over the training set (ignored when max_steps > 0)
    max_steps: int = ranged(0, ge=0)  # stop after this many optimizer steps; 0 = run `epochs` epochs
    batch_size: int = ranged(128, ge=1, resume=Fixed("the global batch (the data position is counted in global batches; the number of processes and train.grad_accum may change)"))  # GLOBAL batch per optimizer step, summed over ranks and accumulation
    grad_accum: int = ranged(1, ge=1)  # micro-batches per optimizer step
    eval_batch_size: int = ranged(1024, ge=1, evaluate=APPLIED)  # global evaluation batch
    clip_grad_norm: float = ranged(0.0, ge=0)  # clip the global grad norm to this value after unscaling; 0 = off
    ema_decay: float = ranged(0.0, ge=0, lt=1)  # EMA of weights, evaluated and checkpointed: the decay per EMA update; 0 = off
    ema_every_steps: int = ranged(1, ge=1, read_when="train.ema_decay=0.9")  # update the EMA every N optimizer steps (counted over the run)
    ema_warmup: Literal["none", "restart", "ramp"] = setting("none", read_when="train.ema_decay=0.9")  # restart: copy the weights through optim.warmup_steps (torchvision); ramp: timm's (docs/usage.md)
    log_every_steps: int = ranged(50, ge=1)  # reduce and log training metrics every N optimizer steps
    eval_every_steps: int = ranged(0, ge=0)  # evaluate every N steps; 0 = at the end of each epoch
    ckpt_every_steps: int = ranged(0, ge=0)  # checkpoint every N steps; 0 = at the end of each epoch
    compile: bool = setting(False, evaluate=APPLIED)  # torch.compile the model(s)
    channels_last: bool | Literal["auto"] = setting("auto", evaluate=APPLIED)  # NHWC memory format for models and image batches; auto = on for CUDA, off elsewhere
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~1/3 more compute
    progress: bool = setting(True, evaluate=APPLIED)  # tqdm bars (training steps, each evaluation's batches) on rank 0 when stderr is a terminal
    max_nonfinite_steps: int = ranged(5, ge=1)  # stop when train_step returns NaN/inf this many optimizer steps in a row
    profile_steps: int = ranged(0, ge=0)  # torch.profiler traces of this many steps into out_dir/profile/; 0 = off
    profile_start: int = ranged(10, ge=0)  # the first optimizer step recorded (0-based; the first steps are warm-up)
    early_stop_metric: str | None = None  # stop when this eval metric (e.g. val/acc1) stops improving (docs/usage.md); none = off
    early_stop_patience: int = ranged(5, ge=1, read_when="train.early_stop_metric=val/loss")  # early stopping: evaluations in a row without improvement before the run stops
    early_stop_min_delta: float = ranged(0.0, ge=0, read_when="train.early_stop_metric=val/loss")  # early stopping: an improvement is a change of more than this, the better way


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw", "adam", "lamb", "lars", "lion"] = setting("sgd", resume=Fixed("the optimizer type (the saved optimizer state has its layout)"))  # optimizer (lamb, lars, lion: timm's)
    lr: float = ranged(0.1, gt=0, le=LR_MAX)  # peak learning rate
    momentum: float = ranged(0.9, ge=0, lt=1, read_when="optim.name=sgd")  # SGD and LARS momentum
    nesterov: bool = setting(False, read_when="optim.name=sgd")  # SGD and LARS Nesterov momentum
    betas: list[float] = ranged(factory=lambda: [0.9, 0.999], length=2, ge=0, lt=1, read_when="optim.name=adam")  # Adam, AdamW, LAMB and Lion betas
    weight_decay: float = ranged(0.0, ge=0)  # decoupled for AdamW, LAMB and Lion, L2 for SGD and LARS
    decay_norm_and_bias: bool = False  # also apply weight decay to norm layers and biases
    schedule: Literal["constant", "cosine", "step", "onecycle", "poly", "cosine_restarts", "plateau"] = "cosine"  # LR schedule, stepped per optimizer step (plateau: lowered at evaluations)
    warmup_steps: int = ranged(0, ge=0)  # linear warmup from 0 to lr (every schedule but onecycle)
    step_milestones: list[float] = ranged(factory=lambda: [0.5, 0.75], ge=0, le=1, read_when="optim.schedule=step")  # step schedule: fractions of training
    step_gamma: float = ranged(0.1, gt=0, read_when="optim.schedule=step")  # step schedule: LR factor at each milestone
    min_lr_ratio: float = ranged(0.0, ge=0, le=1, read_when="optim.schedule=cosine")  # cosine, cosine_restarts, poly: final lr as a fraction of lr (plateau: the lowest)
    power: float = ranged(1.0, gt=0, read_when="optim.schedule=poly")  # poly: lr falls as (1 - progress) ** power
    cycles: int = ranged(2, ge=1, read_when="optim.schedule=cosine_restarts")  # cosine_restarts: equal cosine cycles after warmup, each from lr
    plateau_factor: float = ranged(0.1, gt=0, lt=1, read_when="optim.schedule=plateau")  # plateau: the LR is multiplied by this when the eval metric stalls
    plateau_patience: int = ranged(2, ge=0, read_when="optim.schedule=plateau")  # plateau: evaluations without improvement tolerated; the LR drops at the next


@dataclass
class CkptConfig:
    keep_last: int = ranged(3, ge=1)  # keep the newest N checkpoints (plus the best)
    best_metric: str | None = "val/acc1"  # metric that decides the best checkpoint, e.g. val/acc1; none (or empty) = no best checkpoint
    best_mode: Literal["max", "min"] = "max"  # whether larger or smaller best_metric is better
    async_save: bool = False  # engine=fsdp: write the sharded checkpoint in the background while training continues


@dataclass
class FsdpConfig:
    reshard_after_forward: bool = True  # free a block's gathered parameters after its forward; false = keep them (ZeRO-2-like)
    cpu_offload: bool = False  # keep sharded parameters, gradients and optimizer state in host memory (CUDA only)


@dataclass
class LogConfig:
    backends: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=lambda: ["tensorboard"])  # where rank 0 sends metrics besides metrics.jsonl (wandb, mlflow: docs/usage.md)
    project: str = setting("dtrain", read_when="log.backends=[mlflow]")  # W&B project and MLflow experiment name (the run is named after out_dir)
    mlflow_uri: str = setting("", read_when="log.backends=[mlflow]")  # MLflow tracking URI (http://host:5000, sqlite:///path.db); empty = out_dir/mlflow.db


@dataclass
class ModelSection:
    """The model section every recipe has: each recipe declares its own fields, in place of this empty one."""


@dataclass
class BaseConfig:
    seed: int = ranged(0, ge=0, le=SEED_MAX, resume=Fixed("the data order (the position in the epoch is counted in this seed's shuffle)"))  # seeds weights, data order and augmentation
    out_dir: str = setting("runs/{recipe}", resume=NOT_COMPARED, evaluate=IGNORED)  # run directory: config.yaml, metrics.jsonl, tb/, checkpoints/; {recipe} = the script's name
    resume: str = setting("auto", resume=NOT_COMPARED, evaluate=IGNORED)  # auto (newest valid checkpoint in out_dir) | none | path to a checkpoint
    overwrite: bool = setting(False, resume=NOT_COMPARED, evaluate=IGNORED)  # true: a fresh start moves another run's files to out_dir/previous-<time>/; false: refuse
    init_from: str = setting("none", resume=NOT_COMPARED, evaluate=IGNORED)  # a fresh run starts from the weights only of a run dir, checkpoint or --export file
    engine: str = setting("auto", evaluate=APPLIED, resume=Fixed("the checkpoint format (DeepSpeed and FSDP keep weights and optimizer state in their own per-rank format)", engine=OWN_FORMAT))  # ddp | accelerate | deepspeed | fsdp; auto = from the launcher, else ddp
    deepspeed_config: str = setting("launch/deepspeed/zero2.json", evaluate=APPLIED, read_when="engine=deepspeed")  # DeepSpeed JSON (ZeRO stage, bf16/fp16); relative to the working dir or the repo
    precision: Literal["fp32", "bf16", "fp16"] = setting("fp32", evaluate=APPLIED, resume=Fixed("DeepSpeed's saved optimizer and loss-scaler state is for one precision", engine="deepspeed"))  # autocast dtype; fp16 adds a GradScaler
    device: Literal["auto", "cpu", "cuda", "mps"] = setting("auto", evaluate=APPLIED)  # auto = cuda if present, else mps, else cpu
    dist_timeout_s: int = ranged(600, ge=1, evaluate=APPLIED)  # collective timeout: a hung rank fails the job instead of blocking forever
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = setting(factory=TrainConfig, evaluate=IGNORED)
    optim: OptimConfig = setting(factory=OptimConfig, evaluate=IGNORED)
    ckpt: CkptConfig = setting(factory=CkptConfig, evaluate=IGNORED)
    fsdp: FsdpConfig = setting(factory=FsdpConfig, read_when="engine=fsdp")  # engine=fsdp (common/engines/fsdp.py)
    log: LogConfig = field(default_factory=LogConfig)
    model: ModelSection = setting(factory=ModelSection, resume=MODEL)


def best_metric(cfg) -> tuple[str, str] | None:
    """cfg.ckpt.best_metric as (split, metric), e.g. ("val", "acc1"); None when there is no best checkpoint
    (none, empty, or null in YAML)."""
    name = cfg.ckpt.best_metric
    if name is None or name.strip().lower() in ("", "none", "null"):
        return None
    split, _, key = name.partition("/")
    return split, key


