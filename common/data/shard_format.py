"""The pack format common/data/pack.py writes and common/data/shards.py reads: names, keys and sizes.

Per split: shards SPLIT-NNNNNN.tar (per sample a KEY.<ext> member holding the file's bytes, then KEY.cls
holding its label in ASCII; KEY = the sample's number, no dot), SPLIT-index.npy (int64 [N, 4]: shard,
data offset, size, label) and SPLIT-files.json (the files' paths under SRC/SPLIT); MANIFEST last.
"""
from __future__ import annotations

import re

FORMAT = 1  # pack format this code writes and reads
MANIFEST = "dtrain-pack.json"
BLOCK = 512  # tar block: a member is a header block, then its data padded to whole blocks
SPLITS = ("train", "val", "test")
SHARD_NAME = re.compile(r"[^/\s:]+\.tar")  # a shard's file name inside a path, URL or pipe: command


def shard_name(split: str, n: int) -> str:
    return f"{split}-{n:06d}.tar"


def index_name(split: str) -> str:
    return f"{split}-index.npy"


def files_name(split: str) -> str:
    return f"{split}-files.json"


def key(i: int) -> str:
    return f"{i:08d}"  # no dot: webdataset splits a member name into key and extension at the first dot


def member_bytes(size: int) -> int:
    return BLOCK + -(-size // BLOCK) * BLOCK


def sample_bytes(size: int, label: int) -> int:
    """What sample `size` bytes with `label` takes in a shard: its file member and its .cls member."""
    return member_bytes(size) + member_bytes(len(str(label)))
