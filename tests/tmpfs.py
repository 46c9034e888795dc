"""A real, small tmpfs for tests of full and read-only file systems (needs root: mount/umount).

    def test_x(tmpfs):
        fs = tmpfs("40m")          # mounted at fs.path, unmounted when the test ends
        fs.remount("size=200m")    # free space; fs.remount("ro") makes it read-only (no file open for writing)
        tmpfs("40m", path)         # mounted at path
"""
from __future__ import annotations

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
