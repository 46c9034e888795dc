"""A split of a pack (made by common/data/pack.py; layout in common/data/shard_format.py) as an ImageFiles source.

data.root is the pack directory, a brace pattern of shard paths or URLs, or a "::" list of them (the
manifest and index are read beside the first shard). Sample i (file i of the packed folder, in list order)
is one pread of its two tar headers, its data and its label, each checked against the index. URLs
(webdataset's gopen, else fsspec) are copied whole into data.shard_cache on a node's first read, then read
there. Every damaged input is a DataError naming the file.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from common.data.files import SAVED_CLASSES, DataError, absent_classes, labels_by_name
from common.data.shard_format import (BLOCK, MANIFEST, FORMAT, SHARD_NAME, files_name, index_name, key,
                                      member_bytes)
from common.data.streaming import ImageFiles

DEFAULT_CACHE = "~/.cache/dtrain/shards"
SPARE_FILES = 256  # file descriptors left for everything else (the DataLoader passes tensors through them)


# ----------------------------------------------------------------------------- locating a pack

def is_url(s: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:", s) is not None and not s.startswith("file:")


def local_path(s: str) -> str:
    return urlparse(s).path if s.startswith("file:") else s


def beside(location: str, name: str) -> str:
    """The file `name` in the place a shard's location (path, URL or pipe: command) names."""
    found = list(SHARD_NAME.finditer(location))
    if not found:
        raise DataError(f"cannot tell the shard file name in {location!r}: shards end in .tar (made by python -m "
                        "common.data.pack)")
    m = found[-1]
    return location[:m.start()] + name + location[m.end():]


def cached(location: str, name: str, cache: str, size: int | None = None) -> str:
    """A URL's file `name` copied whole into the cache (once per node: a lock, a temporary name, a rename); a
    local path as it is. size: a shard's bytes (a copy of that size is reused); None: fetched again (the
    manifest and index, small, may change with a new pack)."""
    if not is_url(location):
        return local_path(location)
    place = location[::-1].replace(name[::-1], "}{", 1)[::-1]  # the URL without this file's name
    where = Path(os.path.expanduser(cache or DEFAULT_CACHE)) / hashlib.sha256(place.encode()).hexdigest()[:16]
    dest = where / name

    def ready() -> bool:
        return size is not None and dest.is_file() and dest.stat().st_size == size
    if ready():
        return str(dest)
    try:
        where.mkdir(parents=True, exist_ok=True)
        with open(where / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the node's other processes wait for this copy
            if not ready():
                tmp = where / f".{name}.{os.getpid()}.tmp"
                try:
                    with _open_url(location) as src, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    os.replace(tmp, dest)
                finally:
                    tmp.unlink(missing_ok=True)
    except Exception as e:  # a failed pipe, HTTP error or full cache all mean the same to the user
        raise DataError(f"cannot copy {location} into data.shard_cache={where} ({type(e).__name__}: {e}); check "
                        "the URL and that the cache directory is writable") from None
    return str(dest)


def _open_url(url: str):
    """webdataset's opener (pipe:, http(s):, gs:, ...), else fsspec's (s3:// with s3fs installed)."""
    from webdataset.gopen import gopen, gopen_schemes  # lazily: only URLs need it
    if url.split(":", 1)[0] in gopen_schemes:
        return gopen(url, "rb")
    import fsspec  # lazily: an optional package, for object stores webdataset has no opener for
    return fsspec.open(url, "rb").open()


def given_shards(root: str) -> list[str] | None:
    """data.root as a list of shard locations ("::" list, brace pattern, one .tar), None for a pack directory."""
    if "::" in root:
        return [s for s in root.split("::") if s]
    if "{" in root:
        from braceexpand import braceexpand  # lazily: installed with webdataset
        return list(braceexpand(root))
    return [root] if root.endswith(".tar") or is_url(root) else None


class Pack:
    """A pack's manifest and where each of its shards is (`locations`: shard name -> path or URL)."""

    def __init__(self, root: str, cache: str):
        self.root, self.cache, given = root, cache, given_shards(root)
        if given is not None and not given:
            raise DataError(f"data.root={root!r} names no shards: give the pack directory, a brace pattern or a "
                            "'::' list of shard paths")
        first = given[0] if given else str(Path(root) / MANIFEST)
        manifest = beside(first, MANIFEST) if given else first
        self.manifest_at = manifest
        if given is None and not Path(root).is_dir():
            raise DataError(f"data.root={root} does not exist: data.name=shards needs a directory made by "
                            "python -m common.data.pack SRC OUT (or shard paths, docs/data.md)")
        path = cached(manifest, MANIFEST, cache)
        if not Path(path).is_file():
            raise DataError(f"{manifest} is missing: packing did not finish there, or data.root names no shards of "
                            "a pack; run python -m common.data.pack SRC OUT (again)")
        try:
            m = json.loads(Path(path).read_text())
            version = m.get("format") if isinstance(m, dict) else None
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {manifest} ({e}); run python -m common.data.pack again") from None
        if version != FORMAT:
            raise DataError(f"{manifest} was written by pack format {version}; this dtrain reads format {FORMAT}: "
                            "pack the images again with python -m common.data.pack")
        self.classes, self.splits = list(m["classes"]), m["splits"]
        if given is None:
            self.locations = {s["name"]: str(Path(root) / s["name"]) for sp in self.splits.values() for s in sp["shards"]}
        else:
            self.locations = {SHARD_NAME.findall(g)[-1]: g for g in given if SHARD_NAME.search(g)}

    def has(self, split: str) -> bool:
        return split in self.splits

    def split(self, split: str, transform=None) -> ShardFiles:
        """The split's samples as an ImageFiles source; every shard of it must be given (and intact, if local)."""
        if split not in self.splits:
            raise DataError(f"{self.manifest_at} has no {split} split (it has {', '.join(self.splits)}): pack a "
                            f"tree with {split}/, or give its shards")
        shards = self.splits[split]["shards"]
        missing = [s["name"] for s in shards if s["name"] not in self.locations]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(f"data.root={self.root} lacks {len(missing)} {split} shard(s) of the pack "
                            f"{self.manifest_at}: {', '.join(missing[:5])}{more}; give every shard of the split")
        if not shards or sum(s["samples"] for s in shards) == 0:
            raise DataError(f"{self.manifest_at}: the {split} split has no samples; pack a tree with images in "
                            f"{split}/<class>/")
        where = [self.locations[s["name"]] for s in shards]
        index = np.load(cached(beside(where[0], index_name(split)), index_name(split), self.cache), allow_pickle=False)
        files = json.loads(Path(cached(beside(where[0], files_name(split)), files_name(split), self.cache)).read_text())
        return ShardFiles(split, where, index, files, self, transform)


class ShardFiles(ImageFiles):
    """A pack's split as ImageFiles: read(i) is sample i's bytes, where(i) names its shard, key and file."""

    def __init__(self, split: str, shards: list[str], index, files: list[str], pack: Pack, transform=None):
        meta = pack.splits[split]["shards"]  # per shard: name, bytes, samples
        n = sum(m["samples"] for m in meta)
        if index.dtype != np.int64 or index.shape != (n, 4) or len(files) != n:
            raise DataError(f"the {split} index beside {shards[0]} does not match its manifest {pack.manifest_at} "
                            f"({len(index)} samples, the manifest says {n}); pack again")
        self.split, self.shards, self.index, self.cache = split, shards, index, pack.cache
        self.shard_names, self.sizes = [m["name"] for m in meta], [m["bytes"] for m in meta]
        bad = np.flatnonzero((index[:, 3] < 0) | (index[:, 3] >= len(pack.classes)))
        if len(bad):
            raise DataError(f"sample {self.where(int(bad[0]), files)} has label {index[bad[0], 3]}, outside the "
                            f"pack's {len(pack.classes)} classes ({pack.manifest_at}); pack the images again")
        super().__init__(Path(split), files, index[:, 3].tolist(), transform)
        self.pack_classes = pack.classes
        self._open: dict[int, int] = {}  # shard -> file descriptor, per process (never pickled)
        self._keep = 0  # how many may stay open, set by this process's first read
        for k, s in enumerate(shards):
            if not is_url(s):
                self._check_size(k, local_path(s))

    def __getstate__(self):
        return {**self.__dict__, "_open": {}, "_keep": 0}

    def where(self, i: int, files=None) -> str:
        k = int(self.index[i, 0])
        return f"{self.shards[k]}:{key(i)} ({self.split}/{(files or self.files)[i]})"

    def _check_size(self, k: int, path: str) -> None:
        try:
            have = os.stat(path).st_size
        except OSError as e:
            raise DataError(f"cannot read shard {path} ({e.strerror or e}); give every shard of the pack") from None
        if have != self.sizes[k]:
            copied = f" (copied from {self.shards[k]})" if path != local_path(self.shards[k]) else ""
            raise DataError(f"shard {path}{copied} has {have} bytes where its pack's manifest says {self.sizes[k]}: it is "
                            "truncated or another pack's; copy it again or pack again")

    def _fd(self, k: int) -> int:
        if k not in self._open:
            self._keep = self._keep or open_limit(len(self.shards))
            if len(self._open) >= self._keep:
                os.close(self._open.pop(next(iter(self._open))))
            path = cached(self.shards[k], self.shard_names[k], self.cache, self.sizes[k])
            self._check_size(k, path)
            self._open[k] = os.open(path, os.O_RDONLY)
        return self._open[k]

    def read(self, i: int) -> bytes:
        k, offset, size, label = (int(v) for v in self.index[i])
        name, digits = f"{key(i)}{Path(self.files[i]).suffix.lower()}", str(label).encode()
        span = BLOCK + member_bytes(size) + len(digits)  # header, data, the .cls header and its digits
        buf = os.pread(self._fd(k), span, offset - BLOCK)
        if len(buf) < span:
            raise DataError(f"shard {self.shards[k]} ends inside sample {self.where(i)}: it is truncated; copy it again "
                            "or pack again")
        head = _header(buf[:BLOCK])
        if head is None or head.name != name or head.size != size:
            raise DataError(f"shard {self.shards[k]} does not match its index at sample {self.where(i)} (found "
                            f"{head.name if head else 'no tar header'!r}): it is another pack's; pack again")
        cls = _header(buf[member_bytes(size):member_bytes(size) + BLOCK])
        if cls is None or cls.name != f"{key(i)}.cls":
            raise DataError(f"sample {self.where(i)} has no label: no {key(i)}.cls member follows it in the shard; "
                            "pack the images again")
        if cls.size != len(digits) or buf[-len(digits):] != digits:
            raise DataError(f"sample {self.where(i)}'s label in the shard is not its index's ({label}): the shard is "
                            "another pack's; pack again")
        return buf[BLOCK:BLOCK + size]

    def relabel(self, classes: list[str], known_from: str) -> str | None:
        """Label by class name against `classes` (a trained model's), as a folder is (files.labels_by_name);
        returns the log line naming the classes of `classes` this split lacks, or None."""
        present = [f"{self.pack_classes[c]}/" for c in sorted(set(self.labels))]
        where = f"{self.shards[0]} ({self.split} shards)"  # not a Path: it would fold a URL's //
        mapping = dict(zip(sorted(set(self.labels)), labels_by_name([p + "x" for p in present], classes, where,
                                                                      known_from)))
        self.labels = [mapping[c] for c in self.labels]
        return absent_classes([p + "x" for p in present], classes, where)


def open_limit(shards: int) -> int:
    """How many shard files this process keeps open: all of them (a worker reads every shard in an epoch, and a
    reopen is a metadata round trip on a network file system), raising the soft file limit up to the hard one
    where it needs to; else as many as the limit leaves, after SPARE_FILES."""
    import resource  # lazily: POSIX only, needed once per process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = shards + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < need:
        soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return shards if soft == resource.RLIM_INFINITY else max(16, min(shards, soft - SPARE_FILES))


def _header(block: bytes):
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None


def shard_splits(d, classes: list[str] | None, held_out: str | None = None, transforms=(None, None)):
    """data.root's train split and held-out split (`held_out`; None: val, else test) as ShardFiles, the class
    list they are labelled against (`classes`, a trained model's, else the pack's) and the log line naming
    the classes the held-out split lacks (or None)."""
    pack = Pack(d.root, d.shard_cache)
    held_out = held_out or ("val" if pack.has("val") or not pack.has("test") else "test")
    train, ev = (pack.split(s, t) for s, t in zip(("train", held_out), transforms))
    known_from = SAVED_CLASSES if classes else f"the pack's train/ ({pack.manifest_at})"
    classes = classes or pack.classes
    train.relabel(classes, known_from)
    return train, ev, classes, ev.relabel(classes, known_from)
