"""A SLURM cluster for test_slurm.py: reuse a running one, else start one with slurm_cluster.sh."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launchutil import have_slurm_binaries, slurm_env  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "slurm_cluster.sh"


@pytest.fixture(scope="session")
def slurm_cluster():
    """Yields once `sbatch` reaches a live cluster. Stops the daemons afterwards only if it started them."""
    if not have_slurm_binaries():
        pytest.skip("SLURM is not installed here (needs Debian's slurmctld slurmd slurm-client munge; "
                    "`bash tests/launch/slurm_cluster.sh install` as root); CI installs it")
    os.environ.setdefault("SLURM_CONF", slurm_env()["SLURM_CONF"])
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, env=slurm_env())
    started = False
    if status.returncode != 0 or "idle" not in status.stdout and "mix" not in status.stdout:
        start = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=180)
        assert start.returncode == 0, f"could not start the SLURM cluster:\n{start.stdout}\n{start.stderr}"
        started = True
    yield
    if started:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)
