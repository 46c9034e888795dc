"""fit(): the one training loop every recipe shares.

It counts; the recipe's train_step does the work. Per optimizer step: one list of
micro-batches from the loader, train_step on each (the engine skips the gradient
all-reduce on all but the last), one engine end_step, one scheduler step, the EMA
update when one is due. Metrics stay on the device and are reduced across ranks only
on log steps. Logs, evaluations and checkpoints follow their Cadence; what a checkpoint
holds and whether it is the best: common/train/saver.py. Each evaluation may stop the run early
(common/train/stopping.py), or a sweep's pruner. The run ends with a checkpoint and a row in metrics.jsonl
saying how it ended (Logger.end): finished, stopped_early, pruned, or preempted (a signal).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from common import dist
from common.config import to_dict
from common.train import report, rundir
from common.train.checkpoint import Checkpointer
from common.train.log import END, Logger, read_metrics, write_end
from common.train.meter import Meter, NonFiniteGuard, Throughput, grad_norms, learning_rates, peak_memory
from common.train.profile import StepProfiler
from common.train.progress import Progress
from common.train.preempt import PREEMPT_CHECK_STEPS, Preemption
from common.train.resume import resume
from common.train.saver import Saver
from common.train.stopping import Watch


@dataclass(frozen=True)
class Cadence:
    """Every `every` optimizer steps, else (every = 0) at each epoch end; always at the last step."""
    every: int
    at_epoch_end: bool = False  # also at each epoch end when `every` is set

    def due(self, step: int, epoch_end: bool, last: bool) -> bool:
        return last or (step % self.every == 0 if self.every else epoch_end) or (self.at_epoch_end and epoch_end)


def fit(cfg, state, rt, loaders, train_step, evaluate, recipe: str, metrics: dict[str, str] | None = None) -> dict[str, float]:
    """metrics: the recipe's Task.metrics ({"val/<name>": "max"|"min"}), which early stopping and the
    plateau schedule read their metric's direction from."""
    started, t, train = time.perf_counter(), cfg.train, loaders.train
    watch = Watch(cfg, state, metrics or {}, total_steps(cfg, train))  # the metric checks: before any file
    out, ckpt, total, done = start(cfg, state, rt, loaders, recipe, watch)
    if done is not None:
        return done
    log_at, eval_at, ckpt_at = Cadence(t.log_every_steps, at_epoch_end=True), Cadence(t.eval_every_steps), Cadence(t.ckpt_every_steps)
    logger, meter, guard = Logger(out, rt.is_main, state.step, cfg), Meter(), NonFiniteGuard(t.max_nonfinite_steps, rt.device)
    preempt, speed = Preemption(), Throughput(rt.world_size)
    logger.models(state.models)
    saver, profiler = Saver(cfg, state, rt, ckpt, guard, loaders, recipe), StepProfiler(t, out, rt, state.step)
    bar = logger.progress = Progress(t.progress and rt.is_main, total, state, train.plan.steps)  # last: close() restores stdout
    try:
        while state.step < total and not watch.stopped:
            train.set_epoch(state.epoch, state.batch_in_epoch)
            batches = iter(train)
            while state.step < total and not watch.stopped and (micro_batches := speed.wait(batches)) is not None:
                epoch_end, last = state.batch_in_epoch + 1 == train.plan.steps, state.step + 1 == total  # of this step
                rt.want_grad_norm = log_at.due(state.step + 1, epoch_end, last)  # the norm only where it is logged
                for i, batch in enumerate(micro_batches):
                    with rt.micro_step(i, len(micro_batches)):
                        out_step = train_step(cfg, batch, state, rt)
                    guard.update(meter.add(out_step), state.step + 1)
                    speed.samples += len(batch[0]) * rt.world_size
                end_step(state, rt, epoch_end)
                profiler.step(state.step)
                bar.update()
                if log_at.due(state.step, epoch_end, last):
                    saver.check()
                    logger.log("train", state.step, state.epoch, train_row(rt, state, meter, speed))
                if eval_at.due(state.step, epoch_end, last):
                    with rt.whole(state.models.values()):
                        saver.evaluated(logger.log("val", state.step, state.epoch, evaluate(cfg, state, rt, bar.counted(loaders.eval))))
                    watch.evaluated(saver.last_eval)  # may stop the run: this step's checkpoint holds the count
                if ckpt_at.due(state.step, epoch_end, last):
                    saver.save()
                if (rt.world_size == 1 or state.step % PREEMPT_CHECK_STEPS == 0) and preempt.agreed(rt):
                    saver.finish()
                    logger.end(state.step, state.epoch, "preempted", preempt.reason)
                    preempt.exit(rt, state.step)
                if epoch_end:
                    break
        preempt.finish()
        saver.finish()
        status, reason = ending(state, watch)
        logger.end(state.step, state.epoch, status, reason)
        logger.hparams(to_dict(cfg), saver.last_eval)
        logger.close()  # before the summary: a tracker's own footer (W&B's) must not come after it
        bar.close()  # and the bar is gone: the summary is the last thing on the terminal
        if rt.is_main:
            how = f"finished: step {state.step} of {total}" if status == "finished" else \
                f"stopped at step {state.step} of {total}, {reason}," if status == "pruned" else \
                f"stopped early at step {state.step} of {total}: {reason},"
            rt.log(report.summary(cfg, ckpt, read_metrics(out), f"run {recipe} {how} in "
                                  f"{time.perf_counter() - started:.1f} s"))
        return saver.last_eval
    finally:
        preempt.restore()
        profiler.close()
        logger.close()
        bar.close()


def train_row(rt, state, meter: Meter, speed: Throughput) -> dict[str, float]:
    """What a train row holds: the means of train_step's values since the last row (reduced over the
    ranks), every optimizer's learning rate, speed, gradient norms and peak memory."""
    return {**meter.reduce(rt), **learning_rates(state.optims), **speed.read(), **grad_norms(rt, state.optims),
            **peak_memory(rt)}


def end_step(state, rt, epoch_end: bool) -> None:
    """After the step's micro-batches: the engine's end of step, one scheduler step, the EMA update when due, the counters."""
    rt.end_step()
    for sched in state.scheds.values():
        sched.step()
    state.update_ema(state.step + 1)  # every train.ema_every_steps
    state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
    if epoch_end:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0


def start(cfg, state, rt, loaders, recipe: str, watch: Watch):
    """Run directory, resume, the banner: (out_dir, checkpointer, total steps, None), or with the
    final metrics in place of None when the resumed checkpoint is already the last step, or stopped early.
    loaders.classes: the data's class names, which a resumed checkpoint must share."""
    train, classes = loaders.train, loaders.classes
    out = Path(cfg.out_dir)
    ckpt = Checkpointer(out / "checkpoints", cfg.ckpt.keep_last, cfg.ckpt.best_mode)
    rundir.prepare(cfg, rt, ckpt)  # locked, and not another run's: before anything is written
    total = total_steps(cfg, train)
    resume(cfg, state, rt, ckpt, recipe, total, classes)
    if (count := watch.begin()) is not None:
        rt.log(count)
    if state.step and (state.step >= total or watch.stopped):  # resume=auto found the last step's checkpoint
        rows, (status, reason) = read_metrics(out) if rt.is_main else [], ending(state, watch)
        at = f"step {state.step} of {total}" if state.step == total else f"step {state.step}, past this config's {total} steps"
        again = "a new out_dir, or resume=none overwrite=true, starts over"
        if watch.stopped:  # whatever the settings now: its count (or a sweep's pruner) decided it is done
            at = f"{'stopped' if status == 'pruned' else 'stopped early'} at step {state.step}: {reason}"
            again = f"a new out_dir with init_from={out} trains on from its weights; resume=none overwrite=true starts over"
        rt.log(report.summary(cfg, ckpt, rows, f"run {recipe} is already complete: {at}; nothing to train ({again})"))
        if dist.broadcast_object(not rows or (rows[-1]["split"], rows[-1].get("status")) != (END, status)):
            write_end(out, rt.is_main, state.step, state.epoch, status, reason)  # its process died before it could
        return out, ckpt, total, dist.broadcast_object(report.final_metrics(rows))
    rundir.record_config(out, cfg, state.step)  # only now: a refused resume leaves the old config.yaml as it was
    rt.log(report.banner(cfg, state, rt, recipe, total, loaders))
    return out, ckpt, total, None


def ending(state, watch: Watch) -> tuple[str, str]:
    """How a run that got to state.step ended, as its end row says it: (status, reason)."""
    if watch.stopped:
        return "pruned" if state.early_stop["pruned"] else "stopped_early", state.early_stop["reason"]
    return "finished", f"trained all {state.step} steps"


def total_steps(cfg, train_loader) -> int:
    return cfg.train.max_steps if cfg.train.max_steps > 0 else cfg.train.epochs * train_loader.plan.steps

