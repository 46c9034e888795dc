"""python -m common.data.pack SRC OUT [--shard-size 256MB] [--workers N]: an ImageFolder tree as tar shards.

Every split under SRC (train/, val/, test/) is packed in the folder loaders' order (sample i = file i of
the split), its files copied byte for byte (common/data/shards.py says the layout). Shards are cut in
order by cumulative bytes and written deterministically (two packers write identical bytes), each to a
temporary name and renamed into place; the manifest comes last, so a directory without it is an
unfinished pack the loader refuses. A rerun (or a second packer on the same OUT) skips finished shards.
Bad input exits 2 with one line.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from common.config import UserError
from common.data.files import EXTENSIONS, class_names, labels_by_name, list_images
from common.data.shard_format import (BLOCK, FORMAT, MANIFEST, SPLITS, files_name, index_name, key, sample_bytes,
                                      shard_name)

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
RECORD = tarfile.RECORDSIZE  # tarfile pads an archive to whole records after its two end blocks


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).upper() not in UNITS or float(m.group(1)) <= 0:
        raise UserError(f"--shard-size {text!r}: give bytes, or a size like 256MB, 1GB, 512MiB")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def shard_bytes(samples_bytes: int) -> int:
    return -(-(samples_bytes + 2 * BLOCK) // RECORD) * RECORD


def plan(src: Path, shard_size: int) -> tuple[dict, dict]:
    """(manifest, per split {files, index}): which sample goes where, from the tree alone."""
    if not (src / "train").is_dir():
        raise UserError(f"{src} has no train/ directory: SRC must hold train/ (and val/, test/), each with one "
                        "sub-directory of images per class")
    listed = {}
    for split in SPLITS:
        if (src / split).is_dir():
            listed[split] = [f for f in list_images(src / split) if len(Path(f).parts) > 1]  # as ImageFolder
    classes = class_names(listed["train"])
    if not classes:
        raise UserError(f"found no images ({', '.join(sorted(EXTENSIONS))}) in class sub-directories of "
                        f"{src / 'train'}: SRC must hold train/<class>/<image> files")
    manifest, splits = {"format": FORMAT, "classes": classes, "splits": {}}, {}
    for split, files in listed.items():
        unknown = sorted(set(class_names(files)) - set(classes))
        if unknown:
            raise UserError(f"{src / split} has class folder(s) {', '.join(unknown[:10])} that {src / 'train'} lacks: "
                            "add them to train/ or remove them")
        labels = labels_by_name(files, classes, src / split, str(src / "train"))
        index, shards, used = np.zeros((len(files), 4), dtype=np.int64), [], shard_size
        for i, (f, label) in enumerate(zip(files, labels)):
            size = os.stat(src / split / f).st_size
            need = sample_bytes(size, label)
            if used + need > shard_size and (not shards or shards[-1]["samples"]):
                shards.append({"name": shard_name(split, len(shards)), "bytes": 0, "samples": 0})
                used = 0
            index[i] = (len(shards) - 1, used + BLOCK, size, label)
            used += need
            shards[-1]["samples"] += 1
            shards[-1]["bytes"] = used
        for s in shards:
            s["bytes"] = shard_bytes(s["bytes"])
        manifest["splits"][split] = {"samples": len(files), "shards": shards}
        splits[split] = {"files": files, "index": index}
    return manifest, splits


def write_shard(src: Path, out: Path, split: str, n: int, expected: int, rows: list) -> bool:
    """Shard n of `split` (rows: (sample, file, size, label)) under its final name; False if already there."""
    dest = out / shard_name(split, n)
    if dest.is_file() and dest.stat().st_size == expected:
        return False
    tmp = out / f".{dest.name}.{socket.gethostname()}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for i, name, size, label in rows:
                    data = (src / split / name).read_bytes()
                    if len(data) != size:
                        raise UserError(f"{src / split / name} changed while packing; pack again")
                    _add(tar, f"{key(i)}{Path(name).suffix.lower()}", data)
                    _add(tar, f"{key(i)}.cls", str(label).encode())
            f.flush()
            os.fsync(f.fileno())
        if tmp.stat().st_size != expected:
            raise UserError(f"{dest} came out at {tmp.stat().st_size} bytes, not the planned {expected}; pack again")
        os.replace(tmp, dest)
    except OSError as e:
        raise UserError(f"cannot write {dest} ({e.strerror or e}); check OUT's free space and permissions") from None
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # fixed metadata: two packers write the same bytes
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def clear_stale(out: Path) -> None:
    """Temporary files of this host's packers that died (a live one's, or another host's, are left)."""
    host = socket.gethostname()
    for p in out.glob(f".*.{host}.*.tmp"):
        pid = p.name[:-len(".tmp")].rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def pack(src: Path, out: Path, shard_size: int, workers: int = 1) -> dict:
    """Pack src into out; returns the manifest. Safe to rerun and to run from several processes at once."""
    manifest, splits = plan(src, shard_size)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / f".probe.{socket.gethostname()}.{os.getpid()}", b"")
    except OSError as e:
        raise UserError(f"cannot write into {out} ({e.strerror or e}); choose a writable OUT") from None
    (out / f".probe.{socket.gethostname()}.{os.getpid()}").unlink(missing_ok=True)
    clear_stale(out)
    old = out / MANIFEST
    if old.is_file() and old.read_bytes() != _json(manifest):
        old.unlink(missing_ok=True)  # another plan: the shards below are rewritten, so it no longer holds
    jobs = []
    for split, s in splits.items():
        for n, shard in enumerate(manifest["splits"][split]["shards"]):
            rows = [(i, s["files"][i], int(s["index"][i, 2]), int(s["index"][i, 3]))
                    for i in np.flatnonzero(s["index"][:, 0] == n).tolist()]
            jobs.append((src, out, split, n, shard["bytes"], rows))
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            written = list(pool.map(_write, jobs))
    else:
        written = [_write(job) for job in jobs]
    for split, s in splits.items():
        buf = io.BytesIO()
        np.save(buf, s["index"], allow_pickle=False)
        write_atomic(out / index_name(split), buf.getvalue())
        write_atomic(out / files_name(split), json.dumps(s["files"]).encode())
    write_atomic(out / MANIFEST, _json(manifest))  # last: its presence says every shard is complete
    manifest["written"] = sum(written)
    return manifest


def _write(job) -> bool:
    return write_shard(*job)


def _json(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=1).encode()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m common.data.pack", description=__doc__.split("\n")[0])
    p.add_argument("src", type=Path, help="the ImageFolder tree: SRC/train/<class>/*, SRC/val/..., SRC/test/...")
    p.add_argument("out", type=Path, help="directory the shards, index and manifest go to")
    p.add_argument("--shard-size", default="256MB", help="bytes per shard (256MB, 1GB, 512MiB, plain bytes)")
    p.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.workers < 1:
            raise UserError(f"--workers {args.workers}: give 1 or more")
        m = pack(args.src, args.out, parse_size(args.shard_size), args.workers)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, s in m["splits"].items():
        print(f"{split}: {s['samples']} samples in {len(s['shards'])} shard{'s' * (len(s['shards']) != 1)}, "
              f"{sum(x['bytes'] for x in s['shards']) / 1e6:.1f} MB")
    print(f"packed {args.src} into {args.out} in {time.perf_counter() - start:.1f} s "
          f"({m['written']} shards written, {sum(len(s['shards']) for s in m['splits'].values()) - m['written']} "
          "already complete)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
