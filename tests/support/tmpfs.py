"""A real, small tmpfs for tests of full and read-only file systems (needs root: mount/umount).

    def test_x(tmpfs):
        fs = tmpfs("40m")          # mounted at fs.path, unmounted when the test ends
        fs.remount("size=200m")    # free space; fs.remount("ro") makes it read-only (no file open for writing)
        tmpfs("40m", path)         # mounted at path

    def test_y(quota_fs):
        fs = quota_fs("40M")       # a real quota: writes under fs.path past 40 MiB fail with EDQUOT
        fs.limit("200M")           # raise it
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


class Tmpfs:
    def __init__(self, path: Path):
        self.path = path

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True, capture_output=True)

    def fill(self, leave_bytes: int) -> None:
        """Write a filler file so that about `leave_bytes` stay free."""
        import os
        st = os.statvfs(self.path)
        size = max(0, st.f_bavail * st.f_frsize - leave_bytes)
        with open(self.path / ".filler", "wb") as f:
            f.write(b"\0" * size)


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(size: str, path: Path | None = None) -> Tmpfs:
        path = path or tmp_path / f"tmpfs{len(mounted)}"
        path.mkdir(parents=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"mounting a tmpfs needs root: {r.stderr.strip()}")
        mounted.append(path)
        return Tmpfs(path)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True)


class QuotaFs:
    """A btrfs file system on a loop device whose subvolume `path` has a quota (a qgroup limit): writes
    past it fail with EDQUOT ("Disk quota exceeded") while the file system itself has room."""

    def __init__(self, mount: Path):
        self.mount, self.path = mount, mount / "quota"

    def limit(self, size: str) -> None:
        subprocess.run(["btrfs", "qgroup", "limit", size, str(self.path)], check=True, capture_output=True)


@pytest.fixture
def quota_fs(tmp_path):
    """quota_fs("40M") -> QuotaFs with that limit on .path (needs root, a loop device and btrfs-progs)."""
    made = []

    def make(limit: str) -> QuotaFs:
        if not (shutil.which("mkfs.btrfs") and shutil.which("btrfs")):
            pytest.skip("a btrfs file system with a quota needs btrfs-progs (apt-get install btrfs-progs)")
        image, mount = tmp_path / "quota.img", tmp_path / "quota_mount"
        mount.mkdir()
        with open(image, "wb") as f:
            f.truncate(512 << 20)
        steps = [["mkfs.btrfs", "-q", "-f", str(image)], ["mount", "-o", "loop", str(image), str(mount)],
                 ["btrfs", "quota", "enable", str(mount)], ["btrfs", "subvolume", "create", str(mount / "quota")]]
        for i, cmd in enumerate(steps):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                pytest.skip(f"a btrfs file system with a quota needs root, a loop device and btrfs-progs: "
                            f"{' '.join(cmd[:2])}: {(r.stderr or r.stdout).strip()[:300]}")
            if i == 1:
                made.append(mount)
        fs = QuotaFs(mount)
        fs.limit(limit)
        return fs

    yield make
    for mount in made:
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)
