"""Config: dataclass schema <- recipe YAML <- each --config FILE in order <- dotted CLI overrides.

The dataclasses are the schema. A field's trailing comment is its `--help` text,
so defaults, units and meaning live in one place. YAML files hold only the
differences from what they layer on (a `base:` key names the YAML they extend);
`key=value` arguments on the command line win. Where each value came from is kept
(Cli.sources) for `--dry-run`.
Unknown keys, wrong types and values outside a field's declared range (`ranged(...)`) are errors that
name the key and the fix. How a field is declared and read back: common/fields.py; setting and writing
values: common/values.py. The command line and YAML files (layering, base:, --help) are common/cli.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Also imported from here by the rest of the code: the errors, and what declares, reads and sets fields.
from common.errors import ConfigError, UserError  # noqa: F401
from common.fields import FLOAT32_MAX, flatten, ranged, ranges, schema  # noqa: F401
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


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # mnist | fashion_mnist | cifar10 | cifar100 | synthetic
    root: str = "data"  # dataset directory (relative to the working directory or absolute)
    download: bool = False  # fetch the dataset with torchvision if missing (needs internet)
    augment: bool = False  # random crop (padding 4) + horizontal flip, done on the device
    drop_last: bool = True  # train: drop the last incomplete global batch (False: keep it, padded to equal shards)
    in_memory: bool = True  # keep the whole dataset as one uint8 tensor on the GPU when it fits in a quarter of its free memory (else pinned host memory, batches copied without blocking); false = always host
    synthetic_train: int = ranged(4096, ge=1)  # synthetic dataset: number of training samples
    synthetic_test: int = ranged(1024, ge=1)  # synthetic dataset: number of test samples
    synthetic_shape: list[int] = ranged(factory=lambda: [1, 28, 28], length=3, ge=1)  # synthetic dataset: C, H, W
    synthetic_classes: int = ranged(10, ge=1)  # synthetic dataset: number of classes


@dataclass
class TrainConfig:
    epochs: int = ranged(1, ge=0)  # passes over the training set (ignored when max_steps > 0)
    max_steps: int = ranged(0, ge=0)  # stop after this many optimizer steps; 0 = run `epochs` epochs
    batch_size: int = ranged(128, ge=1)  # GLOBAL batch per optimizer step, summed over ranks and accumulation
    grad_accum: int = ranged(1, ge=1)  # micro-batches per optimizer step
    eval_batch_size: int = ranged(1024, ge=1)  # global evaluation batch
    clip_grad_norm: float = ranged(0.0, ge=0)  # clip the global grad norm to this value after unscaling; 0 = off
    ema_decay: float = ranged(0.0, ge=0, lt=1)  # EMA of weights, evaluated and checkpointed; 0 = off
    log_every_steps: int = ranged(50, ge=1)  # reduce and log training metrics every N optimizer steps
    eval_every_steps: int = ranged(0, ge=0)  # evaluate every N steps; 0 = at the end of each epoch
    ckpt_every_steps: int = ranged(0, ge=0)  # checkpoint every N steps; 0 = at the end of each epoch
    compile: bool = False  # torch.compile the model(s)
    channels_last: bool | Literal["auto"] = "auto"  # NHWC memory format for models and image batches; auto = on for CUDA (faster convolutions), off elsewhere
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    activation_checkpointing: bool = False  # recompute each block's activations in backward instead of storing them (less memory, ~1/3 more compute); engines ddp, accelerate, fsdp
    progress: bool = True  # tqdm progress bar on rank 0 when stderr is a terminal
    max_nonfinite_steps: int = ranged(5, ge=1)  # stop when train_step returns NaN/inf this many optimizer steps in a row
    profile_steps: int = ranged(0, ge=0)  # record this many optimizer steps with torch.profiler on every rank, into out_dir/profile/ (docs/performance.md); 0 = off
    profile_start: int = ranged(10, ge=0)  # the first optimizer step recorded (0-based; the first steps are warm-up)


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw", "adam"] = "sgd"  # optimizer
    lr: float = ranged(0.1, gt=0, le=LR_MAX)  # peak learning rate
    momentum: float = ranged(0.9, ge=0, lt=1)  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    betas: list[float] = ranged(factory=lambda: [0.9, 0.999], length=2, ge=0, lt=1)  # Adam betas
    weight_decay: float = ranged(0.0, ge=0)  # decoupled for AdamW, L2 for SGD
    decay_norm_and_bias: bool = False  # also apply weight decay to norm layers and biases
    schedule: Literal["constant", "cosine", "step", "onecycle"] = "cosine"  # LR schedule, stepped per optimizer step
    warmup_steps: int = ranged(0, ge=0)  # linear warmup from 0 to lr (constant/cosine/step)
    step_milestones: list[float] = ranged(factory=lambda: [0.5, 0.75], ge=0, le=1)  # step schedule: fractions of training
    step_gamma: float = ranged(0.1, gt=0)  # step schedule: LR factor at each milestone
    min_lr_ratio: float = ranged(0.0, ge=0, le=1)  # cosine: final lr as a fraction of lr


@dataclass
class CkptConfig:
    keep_last: int = ranged(3, ge=1)  # keep the newest N checkpoints (plus the best)
    best_metric: str | None = "val/acc1"  # metric that decides the best checkpoint, e.g. val/acc1; none (or empty) = no best checkpoint
    best_mode: Literal["max", "min"] = "max"  # whether larger or smaller best_metric is better
    async_save: bool = False  # engine=fsdp: write the sharded checkpoint in the background while training continues; it becomes a checkpoint only once every rank's write is complete


@dataclass
class FsdpConfig:
    reshard_after_forward: bool = True  # free each block's gathered parameters after its forward and gather again in backward (less memory, one more all-gather per block); false = keep them until backward (ZeRO-2-like)
    cpu_offload: bool = False  # keep sharded parameters, gradients and optimizer state in host memory (CUDA only); the optimizer steps on the CPU


@dataclass
class LogConfig:
    backends: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=lambda: ["tensorboard"])  # where rank 0 sends metrics besides metrics.jsonl; wandb/mlflow need `pip install -r requirements-trackers.txt`
    project: str = "dtrain"  # W&B project and MLflow experiment name (the run is named after out_dir)
    mlflow_uri: str = ""  # MLflow tracking URI (http://host:5000, sqlite:///path.db); empty = out_dir/mlflow.db (SQLite)


@dataclass
class BaseConfig:
    seed: int = ranged(0, ge=0, le=SEED_MAX)  # seeds weights, data order and augmentation
    out_dir: str = "runs/{recipe}"  # run directory: config.yaml, metrics.jsonl, tb/, checkpoints/; {recipe} = the script's name
    resume: str = "auto"  # auto (newest valid checkpoint in out_dir) | none | path to a checkpoint
    overwrite: bool = False  # starting from scratch in an out_dir holding another run's checkpoints: true = move that run's files to out_dir/previous-<time>/ first; false = refuse
    init_from: str = "none"  # start a fresh run from the weights (only) of a run dir, checkpoint or --export file; tensors of another shape (a head for another class count) keep their fresh init; a resume ignores it
    engine: str = "auto"  # ddp | accelerate | deepspeed | fsdp (common/engines/__init__.py lists them); auto = from the launcher (accelerate launch, deepspeed), else ddp
    deepspeed_config: str = "launch/deepspeed/zero2.json"  # engine=deepspeed: DeepSpeed JSON (ZeRO stage, bf16/fp16); relative to the working directory or the repo
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; fp16 adds a GradScaler
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto = cuda if present, else mps, else cpu
    dist_timeout_s: int = ranged(600, ge=1)  # collective timeout: a hung rank fails the job instead of blocking forever
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)  # engine=fsdp (common/engines/fsdp.py)
    log: LogConfig = field(default_factory=LogConfig)


def best_metric(cfg) -> tuple[str, str] | None:
    """cfg.ckpt.best_metric as (split, metric), e.g. ("val", "acc1"); None when there is no best checkpoint
    (none, empty, or null in YAML)."""
    name = cfg.ckpt.best_metric
    if name is None or name.strip().lower() in ("", "none", "null"):
        return None
    split, _, key = name.partition("/")
    return split, key


