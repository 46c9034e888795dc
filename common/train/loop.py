"""fit(): the one training loop every recipe shares.

It counts; the recipe's train_step does the work. Per optimizer step: one list of
micro-batches from the loader, train_step on each (all but the last under DDP
no_sync), one scaler update, one scheduler step, one EMA update. Metrics stay on the
device and are reduced across ranks every `log_every_steps`: no host sync in between.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import torch

from common import dist
from common.train.checkpoint import Checkpointer, load_file
from common.config import UserError, dump_yaml, to_dict
from common.train.log import Logger

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed after a preemption signal; re-run (or requeue) to continue
PREEMPT_CHECK_STEPS = 10  # multi-process runs share their preemption flags every N steps (one tiny all-reduce)


class Preemption:
    """SIGUSR1/SIGTERM only set a flag; the loop acts on it at a step boundary.

    One process acts at the next step. Several processes must stop at the same step, so
    they combine their flags with an all-reduce every PREEMPT_CHECK_STEPS steps. It is
    started without waiting and read one check later, when it has long finished: no rank
    blocks on it and, on a GPU, the result comes back through a pinned host copy and a CUDA
    event recorded behind it, so the step pipeline is never drained (no host-device sync).
    A signal is acted on within 2 x PREEMPT_CHECK_STEPS steps, on every rank at the same step.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self):
        self.flag = False
        self._pending = None  # (work, tensor, host copy or None, event or None) of the last check
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        self.flag = True

    def agreed(self, rt) -> bool:
        """True on every rank if any rank got the signal before the previous check (a collective:
        call it on all ranks at the same steps)."""
        if rt.world_size == 1:
            return self.flag
        if self._read():
            return True
        t = torch.tensor([float(self.flag)], device=rt.device)
        work = torch.distributed.all_reduce(t, async_op=True)
        host = event = None
        if t.is_cuda:
            work.wait()  # orders the compute stream after the all-reduce; does not block the host
            host = torch.empty(1, pin_memory=True)
            host.copy_(t, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self._pending = (work, t, host, event)
        return False

    def _read(self) -> bool:
        if self._pending is None:
            return False
        work, t, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()  # recorded PREEMPT_CHECK_STEPS steps ago: long complete
            return bool(host[0] > 0)
        work.wait()
        return bool(t[0] > 0)

    def finish(self) -> None:
        """At the normal end of training: collect the last all-reduce, which every rank started."""
        self._read()

    def restore(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class Meter:
    """Running sums of train_step outputs, kept on the device until a log step.

    One stack and one add per micro-step, whatever the number of outputs: on a GPU each
    small op is a kernel launch, and a small model's step is only a few dozen of them.
    """

    def __init__(self):
        self.sums: dict[tuple[str, ...], torch.Tensor] = {}  # one running sum per set of output names
        self.counts: dict[tuple[str, ...], int] = {}

    def add(self, out: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Add one train_step's outputs; returns them stacked (for NonFiniteGuard), None if there are none."""
        if not out:
            return None
        keys = tuple(out)
        values = torch.stack([v.detach().float() for v in out.values()])
        if keys in self.sums:
            self.sums[keys].add_(values)
        else:
            self.sums[keys] = values.clone()
        self.counts[keys] = self.counts.get(keys, 0) + 1
        return values

    def reduce(self, rt) -> dict[str, float]:
        """Mean of each output since the last reduce, over steps and ranks (a collective)."""
        if not self.sums:
            return {}
        groups = sorted(self.sums)
        t = torch.cat([self.sums[g] / (self.counts[g] * rt.world_size) for g in groups])
        values = iter(dist.all_reduce_sum(t).tolist())
        self.sums, self.counts = {}, {}
        return {k: next(values) for g in groups for k in g}


class NonFiniteGuard:
    """Stops a run whose train_step outputs are not finite for `limit` micro-steps in a row.

    Per micro-step it writes one flag into a device buffer (two small ops, no host sync);
    the flags are read at log and checkpoint boundaries, or when the buffer is full, and the
    streak is counted on the host. Under fp16 the GradScaler already skips steps with inf/NaN
    gradients; this guard stops a diverged run, naming the step, before a checkpoint is written.
    """

    CAPACITY = 1024  # flags between reads; a full buffer is read early (one sync per 1024 micro-steps)

    def __init__(self, limit: int, device):
        self.limit = max(1, limit)
        self.flags = torch.ones(self.CAPACITY, dtype=torch.bool, device=device)
        self.steps: list[int] = []  # the optimizer step of each pending flag
        self.streak, self.tripped_at = 0, -1

    def update(self, values: torch.Tensor | None, step: int) -> None:
        if values is None:
            return
        torch.all(torch.isfinite(values), out=self.flags[len(self.steps)])
        self.steps.append(step)
        if len(self.steps) == self.CAPACITY:
            self._read()

    def _read(self) -> None:
        for finite, step in zip(self.flags[:len(self.steps)].tolist(), self.steps):
            self.streak = 0 if finite else self.streak + 1
            if self.streak >= self.limit and self.tripped_at < 0:
                self.tripped_at = step
        self.steps.clear()

    def check(self, rt, saved_step: int) -> None:
        """Collective: every rank raises together if any rank tripped."""
        self._read()
        step = self.tripped_at
        if rt.world_size > 1:
            t = torch.tensor([step], dtype=torch.long, device=rt.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            step = int(t.item())
        if step >= 0:
            raise UserError(
                f"train_step returned non-finite values (NaN/inf) for {self.limit} steps in a row, up to step {step}; "
                f"stopping without checkpointing them (newest checkpoint: step {saved_step if saved_step >= 0 else 'none'}). "
                "Try a lower optim.lr, train.clip_grad_norm=1.0, or precision=bf16 instead of fp16 "
                "(train.max_nonfinite_steps sets the count)")


def weights_finite(state) -> bool:
    from common.engines.base import unwrap
    flags = [torch.isfinite(p).all() for m in state.models.values() for p in unwrap(m).parameters() if p.numel()]
    return bool(torch.stack(flags).all().item()) if flags else True


def total_steps(cfg, train_loader) -> int:
    return cfg.train.max_steps if cfg.train.max_steps > 0 else cfg.train.epochs * train_loader.plan.steps


def prepare_run_dir(cfg, rt) -> Path:
    out = Path(cfg.out_dir)
    error = None
    if rt.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(dump_yaml(cfg))
        except OSError as e:
            error = f"out_dir={cfg.out_dir!r} is not writable ({e}); choose another out_dir"
    error = dist.broadcast_object(error)
    if error:
        raise UserError(error)
    return out


def resume(cfg, state, rt, ckpt: Checkpointer) -> None:
    if cfg.resume == "none":
        return
    if cfg.resume == "auto":
        found = ckpt.latest_valid() if rt.is_main else None
        path = dist.broadcast_object(str(found) if found else None)
        if path is None:
            return
    else:
        path = cfg.resume
    sd = load_file(Path(path))
    saved_batch = sd.get("config", {}).get("train", {}).get("batch_size")
    if saved_batch not in (None, cfg.train.batch_size):
        # The data position is counted in global batches: another batch size cannot continue it.
        raise UserError(f"checkpoint {path} was trained with train.batch_size={saved_batch} (global); this run asks "
                        f"for {cfg.train.batch_size}. Resume with train.batch_size={saved_batch} (the number of "
                        "processes may change), or start a new out_dir / resume=none")
    for warning in state.load_state_dict(sd, rt.scaler, rt.recipe):
        rt.log(f"warning: {warning}")
    rt.load_shards(state, Path(path))
    rt.log(f"resumed from {path}: step {state.step}, epoch {state.epoch}, batch {state.batch_in_epoch} of the epoch")


def fit(cfg, state, rt, loaders, train_step, evaluate) -> dict[str, float]:
    out = prepare_run_dir(cfg, rt)
    ckpt = Checkpointer(out / "checkpoints", cfg.ckpt.keep_last, cfg.ckpt.best_mode)
    rt.prepare(state)  # engines bind models to optimizers here (DeepSpeed, Accelerate); no-op for DDP
    resume(cfg, state, rt, ckpt)
    logger = Logger(out, rt.is_main, state.step)
    rt.logger = logger
    train, t = loaders.train, cfg.train
    total = total_steps(cfg, train)
    preempt = Preemption()
    meter = Meter()
    guard = NonFiniteGuard(t.max_nonfinite_steps, rt.device)
    bar = _progress(cfg, rt, total, state.step)
    last_eval: dict[str, float] = {}
    eval_step = -1
    saved_step = state.step if state.step else -1
    samples, waited, t_log = 0, 0.0, time.perf_counter()

    def run_eval():
        nonlocal last_eval, eval_step
        last_eval, eval_step = evaluate(state, rt, loaders.eval), state.step
        logger.log("val", state.step, state.epoch, last_eval)

    def save():
        nonlocal saved_step
        guard.check(rt, saved_step)
        if not weights_finite(state):
            raise UserError(f"weights are not finite at step {state.step}; not writing a checkpoint "
                            f"(newest: step {saved_step}). Try a lower optim.lr or train.clip_grad_norm=1.0")
        split, _, key = cfg.ckpt.best_metric.partition("/")
        value = last_eval.get(key) if split == "val" and eval_step == state.step else None
        is_best = value is not None and ckpt.is_better(value, state.best)
        if is_best:
            state.best = value
        payload = state.state_dict(rt.scaler, to_dict(cfg), rt.recipe)
        ckpt.save(payload, state.step, is_best=is_best, metric=value, shards=rt.save_shards)
        saved_step = state.step

    try:
        while state.step < total:
            train.set_epoch(state.epoch, state.batch_in_epoch)
            batches = iter(train)
            while state.step < total:
                t0 = time.perf_counter()
                micro_batches = next(batches, None)
                waited += time.perf_counter() - t0
                if micro_batches is None:
                    break
                for i, batch in enumerate(micro_batches):
                    with rt.micro_step(i, len(micro_batches)):
                        out = train_step(batch, state, rt)
                    guard.update(meter.add(out), state.step + 1)
                    samples += len(batch[0]) * rt.world_size
                rt.end_step()
                for sched in state.scheds.values():
                    sched.step()
                state.update_ema()
                state.step += 1
                state.batch_in_epoch += 1
                epoch_end = state.batch_in_epoch == train.plan.steps
                if epoch_end:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                last = state.step == total
                if bar:
                    bar.update(1)

                if state.step % t.log_every_steps == 0 or epoch_end or last:
                    guard.check(rt, saved_step)
                    metrics = meter.reduce(rt)
                    elapsed = time.perf_counter() - t_log
                    metrics["lr"] = next(iter(state.optims.values())).param_groups[0]["lr"]
                    metrics["samples_per_s"] = samples / elapsed
                    metrics["data_wait_pct"] = 100 * waited / elapsed
                    logger.log("train", state.step, state.epoch, metrics)
                if (t.eval_every_steps and state.step % t.eval_every_steps == 0) or \
                        (not t.eval_every_steps and epoch_end) or last:
                    run_eval()
                if (t.ckpt_every_steps and state.step % t.ckpt_every_steps == 0) or \
                        (not t.ckpt_every_steps and epoch_end) or last:
                    save()
                check = rt.world_size == 1 or state.step % PREEMPT_CHECK_STEPS == 0
                if check and preempt.agreed(rt):
                    if saved_step != state.step:
                        save()
                    rt.log(f"preempted: checkpoint at step {state.step} written; exiting with code {EXIT_PREEMPTED}")
                    raise SystemExit(EXIT_PREEMPTED)
                if state.step % t.log_every_steps == 0 or epoch_end or last:
                    samples, waited, t_log = 0, 0.0, time.perf_counter()
                if epoch_end:
                    break
        preempt.finish()
        if saved_step != state.step:
            save()
        logger.hparams(to_dict(cfg), last_eval)
        return last_eval
    finally:
        preempt.restore()
        logger.close()
        if bar:
            bar.close()


def _progress(cfg, rt, total: int, start: int):
    if not (cfg.train.progress and rt.is_main and sys.stderr.isatty()):
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, dynamic_ncols=True, leave=False)
