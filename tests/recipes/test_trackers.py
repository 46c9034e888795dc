"""log.backends: W&B (offline mode, no network) and MLflow (a local SQLite store) get the metrics of
metrics.jsonl under the same names, and the config as hyperparameters; read back with each
library's own formats. Skipped only when the package is missing (`pip install -r requirements-trackers.txt`)."""
import json
import struct
import subprocess

import pytest

from support.outputs import metrics
from support.runs import ROOT, recipe_command, run_ranks


def run(tmp_path, backend):
    """The run's metrics by (split, step), and what it printed, stdout and stderr as one stream (a SLURM log)."""
    out = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_home")}
    cmd, env = recipe_command("mnist_mlp", f"out_dir={out}", f"log.backends=[tensorboard,{backend}]",
                              "log.project=dtrain-test", env=env)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    rows = metrics(out)
    return out, {(r["split"], r["step"]): r for r in rows}, proc.stdout


def wandb_records(path):
    """The protobuf records of a .wandb file: a 7-byte header, then LevelDB-log framing (32 KiB blocks,
    each chunk: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B", data[:8]
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block  # block trailer
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def test_wandb_offline_run_holds_the_logged_metrics_and_config(tmp_path):
    pytest.importorskip("wandb")
    out, logged, printed = run(tmp_path, "wandb")
    # dtrain's summary is the log's last word: W&B's footer (its own summary) comes before it
    assert "wandb" in printed and printed.rstrip().splitlines()[-1].startswith("  TensorBoard   "), printed[-3000:]
    (path,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = [], {}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind in ("run", "config"):  # the config given to wandb.init is in the run record
            items = r.run.config.update if kind == "run" else r.config.update
            config.update({i.key: json.loads(i.value_json) for i in items})
    assert history, "no metrics in the offline run"
    for h in history:
        for key, value in h.items():
            if key.startswith(("train/", "val/")):
                split, name = key.split("/", 1)
                name = name.removeprefix("perf/")  # system metrics, grouped (metrics.jsonl: samples_per_s)
                assert value == pytest.approx(logged[(split, h["_step"])][name]), (key, h["_step"])
    assert {h["_step"] for h in history} == {step for _, step in logged}
    assert any("train/grad_norm" in h for h in history) and any("train/perf/samples_per_s" in h for h in history)
    assert config.get("optim.lr") == 0.05 and config.get("train.batch_size") == 32, sorted(config)[:10]
    assert json.loads((out / "trackers.json").read_text())["wandb"] in path.name


def test_mlflow_local_store_holds_the_logged_metrics_and_params(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    out, logged, _ = run(tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run_id = json.loads((out / "trackers.json").read_text())["mlflow"]
    mlrun = client.get_run(run_id)
    assert client.get_experiment(mlrun.info.experiment_id).name == "dtrain-test"
    assert mlrun.data.params["optim.lr"] == "0.05" and mlrun.data.params["train.batch_size"] == "32"
    for split, key in (("train", "loss"), ("train", "grad_norm"), ("val", "acc1")):
        history = client.get_metric_history(run_id, f"{split}/{key}")
        want = sorted((step, r[key]) for (s, step), r in logged.items() if s == split)
        got = sorted((m.step, m.value) for m in history)
        assert [s for s, _ in got] == [s for s, _ in want], (split, key)
        assert [v for _, v in got] == pytest.approx([v for _, v in want]), (split, key)
    assert mlrun.info.status == "FINISHED"


def test_a_tracker_that_fails_to_start_stops_every_rank_with_its_words(tmp_path):
    """Rank 0 opens the trackers: its failure (an MLflow URI no store serves) reaches the other rank too."""
    pytest.importorskip("mlflow")
    cmd, env = recipe_command("mnist_mlp", f"out_dir={tmp_path / 'run'}", "log.backends=[tensorboard,mlflow]",
                              "log.mlflow_uri=bogus://nowhere", nproc=2)
    codes, p = run_ranks(cmd, env, timeout=300)  # each rank's own exit code
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all("a tracker failed to start" in e and "bogus://nowhere" in e for e in errors), \
        p.stderr[-3000:]
    assert codes == [2, 2], (codes, p.stderr[-3000:])
