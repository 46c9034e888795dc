"""`--predict RUN_DIR|CHECKPOINT|EXPORT --input PATH [--top-k 5] [--to FILE] [--weights ema|raw]`: classify images.

The model comes from a run directory or checkpoint (the weights --evaluate takes; its data config is read, as
--evaluate reads it) or from an --export file: weights, or a .pt2/.onnx program run as exported (nothing else needed): open_model is the one place it is opened.
Each image goes through the run's evaluation transform (common/lifecycle/preprocess.py) and the forward pass
evaluation uses (common/metrics/classify.py classify: autocast, train.tta_flip), in batches of
train.eval_batch_size on rt.device. Under torchrun the files are sharded over the ranks and gathered; rank 0
writes one CSV in input order (common/lifecycle/inputs.py). A file that cannot be read is a row with its error;
when no file could be read the command ends with exit 2, after writing the CSV.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

from common import dist
from common.config import UserError
from common.data.gpu_decode import require_cuda
from common.data.sampling import eval_shard
from common.formats.export import is_export, read_export
from common.lifecycle import deployed
from common.lifecycle.export import describe, load_model
from common.lifecycle.inputs import check_file, default_csv, list_inputs, write_csv
from common.lifecycle.preprocess import Preprocess
from common.lifecycle.source import build_data, checkpoint_config, open_source
from common.metrics.classify import classify
from common.train.runtime import runtime
from common.train.weights import checkpoint_weights

CLASSIFIER = "net"  # the model a classifier recipe exports; a GAN exports its generator, which takes noise
THREADS = min(8, os.cpu_count() or 1)  # decoding files (PIL releases the GIL)


def open_model(task, cli):
    """(config for the runtime, where the CSV goes by default, open(rt) -> (model on rt.device, export metadata,
    what it is in words)) for cli.source: an --export file, or a run directory / checkpoint."""
    path, flag = cli.source, "--predict"
    program = path.suffix in deployed.SUFFIXES  # .pt2/.onnx: run as exported, the metadata beside it
    if program or is_export(path):
        meta = deployed.read_sidecar(path) if program else read_export(path)[1]
        if meta["recipe"] != cli.recipe:
            raise UserError(f"{flag} {path}: the file holds a '{meta['recipe']}' model; run "
                            f"recipes/{meta['recipe']}.py {flag} {path}")
        if cli.weights not in (None, meta["weights"]):
            raise UserError(f"--weights {cli.weights}: {path} holds one set of weights (its {meta['weights']} "
                            "weights); drop --weights, or export the others")
        cfg, _ = checkpoint_config(cli, meta["config"], flag)
        what = f"{path} ({meta['weights']} weights, step {meta['step']})"

        def load(rt):
            if program:
                return deployed.program(path, rt.device), meta, what
            model, info = load_model(path, task)
            return rt.place(model).eval(), info.meta, what
        return cfg, path.parent, load
    src = open_source(cli)

    def load(rt):
        if src.ignored:
            rt.log(f"--predict ignores training settings: {', '.join(src.ignored)}")
        require_cuda(src.cfg.data, rt.device)
        loaders = build_data(task, src, rt)
        weights, which = checkpoint_weights(src.ckpt, src.sd, cli.weights)
        rt.seed()
        model = task.build_models(src.cfg, loaders)[CLASSIFIER]
        model.load_state_dict(weights[CLASSIFIER])
        meta = describe(task, src, loaders, cli.recipe, which)
        return rt.place(model).eval(), meta, f"{src.ckpt} ({src.why}; {which} weights)"
    return src.cfg, src.run_dir or src.ckpt.parent, load


def run(task, cli) -> dict:
    if task.exported != CLASSIFIER:
        raise UserError(f"--predict classifies images with a classifier recipe, and {cli.recipe} is a generative "
                        f"recipe (its model '{task.exported}' makes images, it classifies none): use --evaluate or "
                        "--export with it")
    cfg, where, load = open_model(task, cli)
    to = cli.to or default_csv(where, cli.input)
    with runtime(cfg) as rt:
        paths = dist.on_main(lambda: list_inputs(cli.input))  # bad input is said before the model is read
        dist.on_main(lambda: check_file(to, cli.replace, made=cli.to is None))
        model, meta, what = load(rt)
        pre = Preprocess.from_meta(meta)
        if cli.top_k > len(pre.classes):
            raise UserError(f"--top-k {cli.top_k}: the model knows {len(pre.classes)} classes; use --top-k "
                            f"{len(pre.classes)} or less")
        mine = eval_shard(len(paths), rt.world_size, rt.rank).tolist()
        batch = max(1, cfg.train.eval_batch_size // rt.world_size)  # as evaluation's per-rank batches
        rows = {}
        with ThreadPoolExecutor(THREADS) as pool, torch.no_grad():
            for s in range(0, len(mine), batch):
                idx = mine[s:s + batch]
                rows.update(zip(idx, predict(model, pre, rt, [paths[i] for i in idx], cli.top_k, pool,
                                             cfg.train.tta_flip)))
        rows = {i: r for part in dist.all_gather_object(rows) for i, r in part.items()}
        table = [rows[i] for i in range(len(paths))]
        dist.on_main(lambda: write_csv(to, cli.top_k, table))
        failed = [r for r in table if r[-1]]
        if rt.is_main:
            rt.log(summary(table, what, rt, to))
        if len(failed) == len(table):
            raise UserError(f"--predict: none of the {len(table)} images could be read (first: {failed[0][-1]}); "
                            f"{to} lists each with its error")
    return {"images": len(table), "failed": len(failed)}


def predict(model, pre: Preprocess, rt, paths: list[str], k: int, pool, tta_flip: bool) -> list[list]:
    """The CSV rows of a batch of files: path, k (class, probability) pairs, error ("" when it was read)."""
    def load(part):
        out = []
        for p in part:
            try:
                out.append((pre.load(p), ""))
            except UserError as e:  # DataError: the file is named, with why
                out.append((None, str(e)))
        return out
    parts = [paths[i::THREADS] for i in range(THREADS)]  # a task per thread, not per file: small files decode fast
    loaded = [None] * len(paths)
    for i, part in enumerate(pool.map(load, parts)):
        loaded[i::THREADS] = part
    good = [i for i, (_, err) in enumerate(loaded) if not err]
    rows = [[p, *[""] * (2 * k), err] for p, (_, err) in zip(paths, loaded)]
    try:
        x = pre.batch([loaded[i][0] for i in good], rt.device) if good else None
    except UserError as e:  # data.decode=gpu decodes a batch on the device: the file that failed, one by one
        if len(paths) == 1:
            return [[paths[0], *[""] * (2 * k), str(e)]]
        return [predict(model, pre, rt, [p], k, pool, tta_flip)[0] for p in paths]
    if x is not None:
        logits = classify(model, rt, x.contiguous(memory_format=rt.memory_format), tta_flip)
        top = logits.topk(k, dim=1).indices
        probs = logits.softmax(1).gather(1, top)
        for i, classes, ps in zip(good, top.tolist(), probs.tolist()):
            rows[i][1:-1] = [v for c, p in zip(classes, ps) for v in (pre.classes[c], f"{p:.6f}")]
    return rows


def summary(table: list[list], what: str, rt, to) -> str:
    good = [r for r in table if not r[-1]]
    lines = [f"predicted {len(table)} image(s) with {what} on {rt.world_size} process(es), {rt.device}: "
             f"{len(good)} classified, {len(table) - len(good)} unreadable"]
    lines += [f"  {r[0]}: {r[1]} ({float(r[2]) * 100:.1f}%)" for r in good[:5]]
    lines += [f"  ... and {len(good) - 5} more"] if len(good) > 5 else []
    return "\n".join([*lines, f"wrote {to}"])
