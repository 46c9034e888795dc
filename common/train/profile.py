"""`train.profile_steps=N`: a torch.profiler trace of N optimizer steps, on every rank.

`train.profile_steps=5 train.profile_start=10` records optimizer steps 10..14 (0-based, as state.step
counts before the step runs; the first steps are warm-up), each marked `ProfilerStep#N`, loader
waits included. CPU activity always, CUDA kernels when the run is on a GPU, tensor
shapes and allocations (memory). Each rank writes one Chrome-trace JSON,
out_dir/profile/rank<R>.<time>.pt.trace.json, through torch's tensorboard_trace_handler: Perfetto
(ui.perfetto.dev) or chrome://tracing open the file, Holistic Trace Analysis reads the folder. A run that ends inside the window
(the last step, preemption, an error) writes what it recorded. docs/performance.md says what to look for.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


class StepProfiler:
    """Call step(state.step) once before training and after every optimizer step; close() at the end."""

    def __init__(self, train_cfg, out_dir: Path, rt, step: int):
        start, steps = train_cfg.profile_start, train_cfg.profile_steps
        self.window, self.prof, self.span = (start, start + steps) if steps else None, None, None
        self.out_dir, self.rt = Path(out_dir) / "profile", rt
        self.step(step)

    def step(self, step: int) -> None:
        """`step` optimizer steps are done: start, mark or stop the recording."""
        if self.window is None:
            return
        start, end = self.window
        if self.prof is None and start <= step < end:
            self._start(step)
        elif self.prof is not None and step >= end:
            self.close()
        elif self.prof is not None:
            self._mark(step)

    def _mark(self, step: int | None) -> None:
        """End the current ProfilerStep span; open one for `step` (None: none). torch's profiler marks
        steps itself only under a schedule, whose step count would start at this run's first step."""
        if self.span is not None:
            self.span.__exit__(None, None, None)
        self.span = torch.profiler.record_function(f"ProfilerStep#{step}") if step is not None else None
        if self.span is not None:
            self.span.__enter__()

    def _start(self, step: int) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.rt.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        else:  # kineto's own log (read at its first use) would report GPUs it looks for and a CPU run does not use
            os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prof = torch.profiler.profile(
            activities=activities, record_shapes=True, profile_memory=True,
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(self.out_dir), worker_name=f"rank{self.rt.rank}"))
        self.prof.start()
        self._mark(step)
        self.rt.log(f"profiling optimizer steps {step}..{self.window[1] - 1} into {self.out_dir}")

    def close(self) -> None:
        """Stop a recording in progress and write its trace (on_trace_ready)."""
        if self.prof is not None:
            self._mark(None)
            prof, self.prof, self.window = self.prof, None, None
            prof.stop()
