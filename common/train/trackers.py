"""Where rank 0 sends metrics besides metrics.jsonl (`log.backends`): TensorBoard, Weights & Biases, MLflow.

Every backend gets the same names as metrics.jsonl (`train/loss`, `val/acc1`, ...; system metrics
under `perf/`, as Logger tags them) at the same optimizer step, and the resolved config as hyperparameters.

TensorBoard: one run per split, out_dir/tb/train and out_dir/tb/val, with the split left out of the
tag (`loss`, `acc1`), so TensorBoard draws train and val of a metric on one chart, one colour per
run. The hyperparameters go to the hparams plugin as a session whose metrics are the val run's
scalars: no extra scalar points (add_hparams wrote the final metrics again as single dots at step 0).
W&B and MLflow are optional packages (requirements-trackers.txt), called directly. A resumed run
continues the same W&B / MLflow run: their ids are kept in out_dir/trackers.json.
"""
from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

from common.config import UserError

PIP = "pip install -r requirements-trackers.txt"


def check_installed(backends) -> None:
    """Every rank calls this, so a missing package stops all of them with the same message."""
    for name in backends:
        if name != "tensorboard" and importlib.util.find_spec(name) is None:
            raise UserError(f"log.backends includes {name}, but the {name} package is not installed: {PIP} "
                            f"(or pip install {name}), or leave {name} out of log.backends")


class Tracker:
    def flush(self) -> None:
        """Make what was logged durable now (a write error shows here, not at exit); default: nothing to do."""


class TensorBoard(Tracker):
    def __init__(self, out_dir: Path, resume_step: int, log_cfg, config: dict):
        self.root, self.resume_step, self.writers = Path(out_dir) / "tb", resume_step, {}

    def writer(self, split: str):
        if split not in self.writers:
            from torch.utils.tensorboard import SummaryWriter
            _quiet_writer_thread_errors()
            # purge_step: on resume, events after the resumed step are dropped, so curves do not overlap
            self.writers[split] = SummaryWriter(str(self.root / split), purge_step=self.resume_step or None)
        return self.writers[split]

    def log(self, split: str, step: int, metrics: dict) -> None:
        w = self.writer(split)
        for k, v in metrics.items():
            w.add_scalar(k, v, step)

    def image(self, split: str, tag: str, step: int, grid) -> None:
        self.writer(split).add_image(f"samples/{tag}", grid, step)

    def text(self, tag: str, text: str) -> None:
        self.writer("train").add_text(tag, text, 0)

    def final(self, config: dict, metrics: dict[str, float]) -> None:
        """The hparams session in the val run, its metrics the val scalars already written there."""
        from tensorboard.plugins.hparams import summary_v2 as hp
        w = self.writer("val")._get_file_writer()
        w.add_summary(hp.hparams_config_pb(hparams=[hp.HParam(k) for k in config],
                                           metrics=[hp.Metric(k) for k in metrics]))
        w.add_summary(hp.hparams_pb(config))
        w.flush()

    def flush(self) -> None:
        for w in self.writers.values():
            w.flush()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _quiet_writer_thread_errors() -> None:
    """TensorBoard writes from a thread; a failed write (a full disk) is re-raised by the next flush(),
    which log.py turns into the run's one error message. Python would also print the thread's own
    traceback ahead of it: for that thread's OSErrors, this hook does not."""
    previous = threading.excepthook
    if getattr(previous, "dtrain", False):
        return

    def hook(args):
        if type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError):
            return
        previous(args)
    hook.dtrain = True
    threading.excepthook = hook


def _run_ids(out_dir: Path) -> dict:
    f = Path(out_dir) / "trackers.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return {}


def _save_run_id(out_dir: Path, name: str, run_id: str) -> None:
    f = Path(out_dir) / "trackers.json"
    f.write_text(json.dumps({**_run_ids(out_dir), name: run_id}))


class WandB(Tracker):
    def __init__(self, out_dir: Path, resume_step: int, log_cfg, config: dict):
        import wandb
        run_id = _run_ids(out_dir).get("wandb") if resume_step else None
        # console="off": W&B would otherwise wrap stdout/stderr, which the run's own output goes through
        self.run = wandb.init(project=log_cfg.project, name=Path(out_dir).name, dir=str(out_dir), config=config,
                              id=run_id, resume="allow" if run_id else None, settings=wandb.Settings(console="off"))
        _save_run_id(out_dir, "wandb", self.run.id)

    def log(self, split: str, step: int, metrics: dict) -> None:
        self.run.log({f"{split}/{k}": v for k, v in metrics.items()}, step=step)

    def final(self, config: dict, metrics: dict[str, float]) -> None:
        """Nothing: the run's summary already holds the last value of each metric."""

    def close(self) -> None:
        self.run.finish()


class MLflow(Tracker):
    BATCH = 100  # MLflow takes at most 100 params per log_batch call

    def __init__(self, out_dir: Path, resume_step: int, log_cfg, config: dict):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        out = Path(out_dir).resolve()
        self.client = MlflowClient(tracking_uri=log_cfg.mlflow_uri or f"sqlite:///{out / 'mlflow.db'}")
        exp = self.client.get_experiment_by_name(log_cfg.project)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            log_cfg.project, artifact_location=None if log_cfg.mlflow_uri else (out / "mlartifacts").as_uri())
        run_id = _run_ids(out_dir).get("mlflow") if resume_step else None
        self.run_id = run_id or self.client.create_run(exp_id, run_name=Path(out_dir).name).info.run_id
        _save_run_id(out_dir, "mlflow", self.run_id)
        if not run_id:  # MLflow refuses to change a logged param; a resumed run keeps the first values
            params = [Param(k, str(v)[:500]) for k, v in config.items()]
            for i in range(0, len(params), self.BATCH):
                self.client.log_batch(self.run_id, params=params[i:i + self.BATCH])

    def log(self, split: str, step: int, metrics: dict) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"{split}/{k}", float(v), now, step)
                                                    for k, v in metrics.items()])

    def final(self, config: dict, metrics: dict[str, float]) -> None:
        """Nothing: MLflow shows each metric's last value."""

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


BACKENDS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def open_trackers(log_cfg, out_dir: Path, resume_step: int, config: dict) -> list:
    """One tracker per backend, in order; if one fails, those already open are closed."""
    opened = []
    try:
        for name in dict.fromkeys(log_cfg.backends):
            opened.append(BACKENDS[name](Path(out_dir), resume_step, log_cfg, config))
    except BaseException:
        for t in opened:
            t.close()
        raise
    return opened
