"""engine=fsdp: PyTorch FSDP2 (`fully_shard`) with sharded DCP checkpoints that reshard on resume.

Each model is sharded per block (common/models/blocks.py) and at its root; every rank keeps 1/world
of each parameter, its gradient and its optimizer state. The recipe's calls keep their meaning:
`rt.prepare` shards and points the optimizers at the sharded parameters, non-final micro-steps skip
the reduce-scatter, `rt.step` clips the global norm, `rt.whole` gathers every block for evaluation.
Checkpoints: each rank writes its shard with torch.distributed.checkpoint into `step_N/fsdp/`
(`ckpt.async_save` writes while training goes on); `read_full_weights` reads them in one process.
precision=fp16 uses ShardedGradScaler. Why and how it compares: docs/launch.md#engines.
"""
from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

from common import dist
from common.config import START_OVER, UserError
from common.engines.base import Engine
from common.formats.checkpoint import CheckpointError, verify
from common.models.blocks import find_blocks
from common.userfiles import damaged, expect

SUBDIR = "fsdp"  # the DCP directory inside checkpoints/step_N/


def check_metadata(where: Path) -> None:
    """DCP reads fsdp/.metadata with pickle's full power: before it does, the file must unpickle allowing only
    DCP's own metadata classes and the torch values they hold (by name), and be a Metadata. Anything else
    is a DamagedFile naming it; nothing of it runs."""
    from torch.distributed.checkpoint import metadata as m

    path, what, fix = where / ".metadata", "checkpoint file", "use another checkpoint"
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except Exception as e:
        raise damaged(what, path, e, fix) from None
    expect(metadata, m.Metadata, what, path, "the file", fix)


class _MetadataUnpickler(pickle.Unpickler):
    ALLOWED = {("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "TensorStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING", "ChunkStorageMetadata",
        "BytesStorageMetadata", "MetadataIndex", "StorageMeta")} | {
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
        ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath")}

    def find_class(self, module: str, name: str):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)  # torch.float32, ...
        if (module, name) in self.ALLOWED or dtype:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}")


def read_full_weights(ckpt_dir) -> dict[str, dict[str, torch.Tensor]]:
    """{model name: plain state_dict} from an engine=fsdp checkpoint (checkpoints/step_N, its state.pt, or
    its fsdp/ directory), in this process alone: no process group, any number of writer ranks.
    The checkpoint is verified against its MANIFEST.json first."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    where = Path(ckpt_dir)
    if where.is_file():
        where = where.parent
    if where.name == SUBDIR:
        where = where.parent
    reason = verify(where)
    if reason:
        raise CheckpointError(f"checkpoint {where} is not usable: {reason}")
    if not (where / SUBDIR / ".metadata").is_file():
        raise UserError(f"{where} has no {SUBDIR}/ directory: it was not written by engine=fsdp "
                        "(ddp/accelerate checkpoints hold plain weights in state.pt already)")
    check_metadata(where / SUBDIR)
    sd: dict = {}
    _load_state_dict(sd, storage_reader=dcp.FileSystemReader(str(where / SUBDIR)),
                     planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return sd["models"]


class FSDPEngine(Engine):
    name = "fsdp"
    async_save = True

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        f = cfg.fsdp
        if cfg.train.compile:
            raise UserError("train.compile=true is not wired for engine=fsdp (fully_shard must see the plain "
                            "modules before compile); use train.compile=false")
        if f.cpu_offload and self.device.type != "cuda":
            raise UserError(f"fsdp.cpu_offload=true moves sharded state from the GPU to host memory; on "
                            f"device={self.device.type} it already is there: set fsdp.cpu_offload=false")
        if not tdist.is_initialized():
            # FSDP2 and DCP talk through a process group, even a group of one (plain `python`):
            # the checkpoint format is then the same at every world size.
            env.info.backend = "nccl" if self.device.type == "cuda" else "gloo"
            tdist.init_process_group(env.info.backend, store=tdist.HashStore(), rank=0, world_size=1)
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))
        self.reshard_after_forward = f.reshard_after_forward
        self.shard_kw = {"mesh": self.mesh, "reshard_after_forward": f.reshard_after_forward,
                         "mp_policy": MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32),
                         "offload_policy": CPUOffloadPolicy() if f.cpu_offload else OffloadPolicy()}
        # Each rank sees only its shard of the gradients: an inf on one shard must skip the step everywhere.
        self.scaler = ShardedGradScaler(self.device.type, enabled=cfg.precision == "fp16")
        # Async writes collect their results over their own group, apart from training's collectives.
        self._write_group = tdist.new_group(backend="gloo") if cfg.ckpt.async_save else None
        self.models: dict[str, FSDPModule] = {}
        self.optims: dict[str, tuple[str, torch.optim.Optimizer]] = {}  # optimizer name -> (model name, optimizer)

    def describe(self) -> str:
        blocks = f"{sum(len(find_blocks(m)) for m in self.models.values())} blocks" if self.models else "per block"
        return (f"fsdp (FSDP2 fully_shard over {self.world_size} rank(s), {blocks} + root of each model), "
                + (f"{self.cfg.precision} parameters and autocast, fp32 gradient reduction" if self.dtype else "fp32")
                + (", CPU offload" if self.cfg.fsdp.cpu_offload else ""))

    # -- models ------------------------------------------------------------------------------
    def prepare(self, models, optims):
        owners = {id(p): (name, pname) for name, m in models.items() for pname, p in m.named_parameters()}
        for opt_name, opt in optims.items():
            names = {owners.get(id(p), (None,))[0] for g in opt.param_groups for p in g["params"]}
            if len(names) != 1 or None in names:
                raise UserError(f"engine=fsdp needs each optimizer to update exactly one model (its sharded state "
                                f"is saved with that model's); optimizer '{opt_name}' updates {sorted(map(str, names))}")
            self.optims[opt_name] = (names.pop(), opt)
        for name, m in models.items():
            for block in find_blocks(m):
                fully_shard(block, **self.shard_kw)
            fully_shard(m, **self.shard_kw)
        sharded = {(name, pname): p for name, m in models.items() for pname, p in m.named_parameters()}
        for opt_name, opt in optims.items():
            for g in opt.param_groups:
                g["params"] = [sharded[owners[id(p)]] for p in g["params"]]
        self.models = dict(models)
        self.owned = set(models) | set(optims)
        return dict(models), dict(optims)

    @contextlib.contextmanager
    def whole(self, models):
        fsdp = [sub for m in models for sub in m.modules() if isinstance(sub, FSDPModule)]
        for sub in fsdp:
            sub.set_reshard_after_forward(False, recurse=False)
            sub.unshard()  # the same all-gathers on every rank, in module order
        try:
            yield
        finally:
            for sub in fsdp:
                sub.reshard()
                sub.set_reshard_after_forward(self.reshard_after_forward, recurse=False)

    # -- optimisation ----------------------------------------------------------------------
    @contextlib.contextmanager
    def micro_step(self, i: int, n: int):
        self.micro, self.n_micro = i, n
        for m in self.models.values():
            # Gradients of non-final micro-batches stay unsharded and local; the final backward
            # reduce-scatters their sum once. Weights stay gathered between them for the same reason.
            m.set_requires_gradient_sync(self.last_micro)
            m.set_reshard_after_backward(self.last_micro)
        yield

    # -- checkpoints -----------------------------------------------------------------------
    def _sharded_state(self) -> dict:
        return {"models": {k: get_model_state_dict(m) for k, m in self.models.items()},
                "optims": {k: get_optimizer_state_dict(self.models[owner], opt) for k, (owner, opt) in self.optims.items()}}

    def save_shards(self, directory: Path):
        """Collective: every rank writes its own shard into directory/fsdp/ (rank 0 adds .metadata).
        With ckpt.async_save, returns a wait() for the write left in flight."""
        where = Path(directory) / SUBDIR
        where.mkdir(parents=True, exist_ok=True)
        if self._write_group is None:
            dcp.save(self._sharded_state(), checkpoint_id=str(where))
            return None
        # FileSystemWriter stages (copies) the shards before async_save returns: the next optimizer
        # step cannot change what is being written.
        future = dcp.async_save(self._sharded_state(), checkpoint_id=str(where), process_group=self._write_group)
        return future.result

    def load_shards(self, ckpt_dir: Path) -> None:
        """dcp.load into this run's shards: each rank reads the parts of the saved tensors it now owns,
        whatever the world size that wrote them."""
        ckpt_dir = Path(ckpt_dir)
        if ckpt_dir.is_file():
            ckpt_dir = ckpt_dir.parent
        where = ckpt_dir / SUBDIR
        if not (where / ".metadata").is_file():
            raise UserError(f"{ckpt_dir} has no {SUBDIR}/ directory: it was not written by engine=fsdp; resume it "
                            f"with the engine that wrote it (its config.yaml says which), or {START_OVER}")
        check_metadata(where)
        sd = self._sharded_state()
        dcp.load(sd, checkpoint_id=str(where))
        for k, m in self.models.items():
            set_model_state_dict(m, sd["models"][k])
        for k, (owner, opt) in self.optims.items():
            set_optimizer_state_dict(self.models[owner], opt, sd["optims"][k])
        dist.broadcast_object(None)  # every rank has read its part before anything else touches the files
