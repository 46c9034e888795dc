"""python -m common.data.pack and the shard reader (common/data/shards.py): the bytes, the layout, packers that
run in parallel or are killed, the forms of data.root, URLs, and each kind of bad input as one exit-2 line."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from types import SimpleNamespace

import numpy as np
import pytest

from common.data.files import DataError, list_images
from common.data.pack import pack
from common.data.shard_format import MANIFEST
from common.data.shards import Pack, shard_splits
from support.images import image_tree
from support.runs import ROOT


def tree(root, train=12, val=5, size=(20, 24), classes=3, ext="jpg"):
    rng = np.random.default_rng(0)
    return image_tree(root, {"train": train, "val": val},
                      lambda s, i: rng.integers(0, 255, (*size, 3), dtype=np.uint8), classes=classes, ext=ext)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    d = tmp_path_factory.mktemp("pack")
    src = tree(d / "src")
    (src / "train" / "c1" / "odd.name.PNG").write_bytes((src / "train" / "c1" / "001.jpg").read_bytes())  # dots, case
    (src / "train" / "loose.jpg").write_bytes(b"not in a class folder: skipped, as ImageFolder does")
    pack(src, d / "out", 6000)
    return src, d / "out"


def packer(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "common.data.pack", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run_pack(*args):
    p = packer(*args)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


def data(root, cache=""):
    return SimpleNamespace(root=str(root), shard_cache=cache)


def test_each_sample_is_its_file_s_bytes_in_folder_order_with_webdataset_names(packed):
    src, out = packed
    train, val, classes, _ = shard_splits(data(out), None)
    assert classes == ["c0", "c1", "c2"]
    for split, source in (("train", train), ("val", val)):
        files = [f for f in list_images(src / split) if "/" in f]
        assert source.files == files and len(source) == len(files)
        assert [source.read(i) for i in range(len(files))] == [(src / split / f).read_bytes() for f in files]
        assert source.labels == [classes.index(f.split("/")[0]) for f in files]
    manifest = json.loads((out / MANIFEST).read_text())
    assert len(manifest["splits"]["train"]["shards"]) > 1  # cut by bytes
    index = np.load(out / "train-index.npy", allow_pickle=False)
    members = []
    for s in manifest["splits"]["train"]["shards"]:
        assert (out / s["name"]).stat().st_size == s["bytes"]
        with tarfile.open(out / s["name"]) as t:  # what webdataset and tar read: KEY.ext, KEY.cls, in order
            ms = t.getmembers()
            assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in ms)
            members += [(m.name, m.offset_data, m.size, t.extractfile(m).read()) for m in ms]
    files = train.files
    assert [m[0] for m in members[::2]] == [f"{i:08d}.{files[i].rsplit('.', 1)[1].lower()}" for i in range(len(files))]
    assert [m[0] for m in members[1::2]] == [f"{i:08d}.cls" for i in range(len(files))]
    assert [(m[1], m[2]) for m in members[::2]] == [(int(r[1]), int(r[2])) for r in index]
    assert [int(m[3]) for m in members[1::2]] == index[:, 3].tolist()
    import webdataset  # webdataset's own reader sees the same samples
    urls = [str(out / s["name"]) for s in manifest["splits"]["train"]["shards"]]
    got = [(s["__key__"], s[files[int(s["__key__"])].rsplit(".", 1)[1].lower()], int(s["cls"]))
           for s in webdataset.WebDataset(urls, shardshuffle=False)]
    assert got == [(f"{i:08d}", train.read(i), train.labels[i]) for i in range(len(files))]


def test_brace_patterns_and_lists_read_the_same_samples_as_the_directory(packed):
    _, out = packed
    names = sorted(p.name for p in out.glob("*.tar"))
    n_train, n_val = sum(n.startswith("train") for n in names), sum(n.startswith("val") for n in names)
    forms = [f"{out}/{{train,val}}-{{000000..{max(n_train, n_val) - 1:06d}}}.tar",  # names beyond a split: unused
             "::".join(str(out / n) for n in names), "::".join(f"file://{out / n}" for n in names)]
    want = shard_splits(data(out), None)
    for form in forms:
        got = shard_splits(data(form), None)
        for a, b in zip(want[:2], got[:2]):
            assert [a.read(i) for i in range(len(a))] == [b.read(i) for i in range(len(b))] and a.labels == b.labels
    with pytest.raises(DataError, match="names no shards"):
        Pack("::", "")
    with pytest.raises(DataError, match=r"lacks 1 val shard\(s\).*val-000000.tar"):
        shard_splits(data("::".join(str(out / n) for n in names if n != "val-000000.tar")), None)


def test_urls_are_copied_once_into_the_cache_and_read_there(packed, tmp_path):
    _, out = packed
    pattern = f"pipe:cat {out}/{{train,val}}-{{000000..000009}}.tar"
    train, val, _, _ = shard_splits(data(pattern, tmp_path / "cache"), None)
    local = shard_splits(data(out), None)[0]
    assert [train.read(i) for i in range(len(train))] == [local.read(i) for i in range(len(local))]
    copies = sorted(p.name for p in (tmp_path / "cache").rglob("*.tar"))
    assert copies == sorted(p.name for p in out.glob("train-*.tar")), copies  # val not read yet: not copied
    first = {p: p.stat().st_ino for p in (tmp_path / "cache").rglob("*.tar")}
    again = shard_splits(data(f"pipe:dd if={out}/{{train,val}}-{{000000..000009}}.tar status=none", tmp_path / "cache"),
                         None)[0]  # another command for the same shards: its own copies
    assert [again.read(i) for i in range(len(again))] == [local.read(i) for i in range(len(local))]
    train = shard_splits(data(pattern, tmp_path / "cache"), None)[0]
    assert [train.read(i) for i in range(len(train))] == [local.read(i) for i in range(len(local))]
    assert all(p.stat().st_ino == ino for p, ino in first.items())  # read from the copies made before
    cut = shutil.copytree(out, tmp_path / "cut")
    (cut / "train-000000.tar").write_bytes((cut / "train-000000.tar").read_bytes()[:-700])
    cut_train = shard_splits(data(f"pipe:cat {cut}/{{train,val}}-{{000000..000009}}.tar", tmp_path / "cache"), None)[0]
    with pytest.raises(DataError, match=f"copied from pipe:cat {cut}/train-000000.tar.*truncated"):
        cut_train.read(0)
    with pytest.raises(DataError, match="cannot copy pipe:cat /nonexistent/dtrain-pack.json"):
        shard_splits(data("pipe:cat /nonexistent/train-000000.tar", tmp_path / "cache"), None)


def test_parallel_packers_write_one_identical_complete_pack(packed, tmp_path):
    src, _ = packed
    procs = [packer(src, tmp_path / "out", "--shard-size", "3KB", "--workers", w) for w in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    assert run_pack(src, tmp_path / "alone", "--shard-size", "3KB")[0] == 0
    files = sorted(p.name for p in (tmp_path / "alone").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "out").iterdir())  # no temporary file left
    assert all((tmp_path / "out" / f).read_bytes() == (tmp_path / "alone" / f).read_bytes() for f in files)


def test_a_killed_packer_leaves_no_complete_looking_shard_and_a_rerun_finishes(tmp_path):
    src = tree(tmp_path / "src", train=300, val=2, size=(64, 64), ext="png")
    out = tmp_path / "out"
    p = packer(src, out, "--shard-size", "1", "--workers", "1")  # one sample a shard
    deadline = time.time() + 60
    while not list(out.glob("train-000002.tar")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / MANIFEST).exists()
    files = list_images(src / "train")
    for shard in out.glob("train-*.tar"):  # every shard under its final name is whole
        with tarfile.open(shard) as t:
            img, cls = t.getmembers()
            assert t.extractfile(img).read() == (src / "train" / files[int(img.name[:8])]).read_bytes()
            assert cls.name == img.name[:8] + ".cls"
    with pytest.raises(DataError, match="packing did not finish.*run python -m common.data.pack"):
        Pack(str(out), "")
    code, stdout, _ = run_pack(src, out, "--shard-size", "1")
    assert code == 0 and "train: 300 samples in 300 shards" in stdout
    assert int(stdout.split("(")[-1].split()[0]) < 302  # the finished shards were kept
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # the dead packer's temporary file is gone
    train = Pack(str(out), "").split("train")
    assert [train.read(i) for i in range(len(train))] == [(src / "train" / f).read_bytes() for f in train.files]


@pytest.mark.parametrize("case", ["no train", "no images", "unwritable", "bad size", "a class train lacks"])
def test_bad_pack_input_is_one_line_exit_2(tmp_path, case):
    src = tree(tmp_path / "src", train=3, val=0)
    args = {"no train": [tmp_path, tmp_path / "o"], "no images": [tmp_path / "src" / "train", tmp_path / "o"],
            "unwritable": [src, "/proc/version/out"], "bad size": [src, tmp_path / "o", "--shard-size", "lots"],
            "a class train lacks": [src, tmp_path / "o"]}[case]
    if case == "no images":
        (tmp_path / "src" / "train" / "train").mkdir()
    if case == "a class train lacks":
        (src / "val" / "extra").mkdir(parents=True)
        shutil.copy(next((src / "train" / "c0").iterdir()), src / "val" / "extra" / "x.jpg")
    code, out, err = run_pack(*args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert {"no train": "has no train/", "no images": "found no images", "unwritable": "/proc/version/out",
            "bad size": "--shard-size 'lots'", "a class train lacks": f"{src / 'val'} has class folder(s) extra"}[case] in err


def rebuild(shard, members):
    """Rewrite a shard as a real tar of (name, bytes) members; returns each member's data offset."""
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, blob in members:
            t.addfile(_info(name, len(blob)), io.BytesIO(blob))
    with tarfile.open(shard) as t:
        return [m.offset_data for m in t.getmembers()]


def _info(name, size):
    info = tarfile.TarInfo(name)
    info.size = size
    return info


def damage(out, case):
    """Make `case` real in the pack `out`; returns the file the error must name."""
    manifest = json.loads((out / MANIFEST).read_text())
    shard = out / "train-000000.tar"
    index = np.load(out / "train-index.npy", allow_pickle=False)
    with tarfile.open(shard) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    n = len(members) // 2
    if case == "truncated":
        shard.write_bytes(shard.read_bytes()[:-1000])
    elif case == "another pack's shard":  # the same sizes, another pack's samples (keys) in it
        rebuild(shard, [(f"{int(name[:8]) + 50:08d}{name[8:]}", blob) for name, blob in members])
    elif case in ("no label", "label outside the classes"):
        if case == "no label":  # a real tar without the .cls members, and an index that matches it
            kept = [m for m in members if not m[0].endswith(".cls")]
        else:  # label 7 in the .cls member and the index: the pack has 3 classes
            kept, index[0, 3] = [(m[0], b"7" if m[0] == "00000000.cls" else m[1]) for m in members], 7
        offsets = rebuild(shard, kept)
        index[:n, 1] = offsets[::1 if case == "no label" else 2][:n]
        np.save(out / "train-index.npy", index, allow_pickle=False)
        manifest["splits"]["train"]["shards"][0]["bytes"] = shard.stat().st_size
        (out / MANIFEST).write_text(json.dumps(manifest))
    elif case == "another pack version":
        manifest["format"] = 0
        (out / MANIFEST).write_text(json.dumps(manifest))
        return out / MANIFEST
    elif case == "empty shard list":  # a pattern that matches no file
        return out / "gone" / MANIFEST
    elif case == "a split with no samples":  # val/ without images
        tree(out / "src", train=3, val=0)
        (out / "src" / "val" / "c0").mkdir(parents=True)
        pack(out / "src", out / "empty", 10**6)
        return out / "empty" / MANIFEST
    return shard


BAD = {"truncated": "truncated", "another pack's shard": "does not match its index", "no label": "has no label",
       "label outside the classes": "has label 7, outside the pack's 3 classes", "empty shard list": "names no shards",
       "a split with no samples": "the val split has no samples",
       "another pack version": "pack format 0"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_shards_stop_the_run_with_one_line_naming_the_file(packed, tmp_path, case):
    from support.inprocess import run_inprocess
    out = shutil.copytree(packed[1], tmp_path / "out")
    named = damage(out, case)
    root = {"empty shard list": f"{out}/gone/train-{{000000..000003}}.tar", "a split with no samples": out / "empty"}.get(case, out)
    p = run_inprocess("mnist_mlp", f"out_dir={tmp_path / 'run'}", "data.name=shards", f"data.root={root}",
                      "data.folder_shape=[1,8,8]", "train.batch_size=4", check=False)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and BAD[case] in err[0] and str(named) in err[0], p.stderr


def test_a_reader_keeps_every_shard_open_raising_a_low_soft_file_limit(tmp_path):
    """A worker reads every shard in an epoch: with 120 one-sample shards and a soft limit of 64 open files (the
    hard one higher), a process reading them all in a shuffled order opens each once and keeps it open."""
    pack(tree(tmp_path / "src", train=120, val=2), tmp_path / "out", 1)
    code = ("import resource, random\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
            "from types import SimpleNamespace\nfrom common.data.shards import shard_splits\n"
            f"train = shard_splits(SimpleNamespace(root={str(tmp_path / 'out')!r}, shard_cache=''), None)[0]\n"
            "order = list(range(len(train))); random.Random(0).shuffle(order)\n"
            "sizes = [len(train.read(i)) for i in order + order]\n"
            "print(len(train.shards), len(train._open), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards, open_now, soft = map(int, proc.stdout.split())
    assert shards == 120 and open_now == 120 and soft >= 120, proc.stdout
