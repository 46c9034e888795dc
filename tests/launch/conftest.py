"""A SLURM cluster for test_slurm.py: reuse a running one, else start one with slurm_cluster.sh."""
import os
import subprocess
import time
from pathlib import Path

import pytest

from support.launchutil import have_slurm_binaries, slurm_env

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


@pytest.fixture(scope="session")
def two_hosts(tmp_path_factory):
    """A simulated two-host cluster (tests/support/twohost.py); torn down even when a test fails."""
    from support.twohost import TwoHosts, have_tools
    why = have_tools()
    if why:
        pytest.skip(f"two-host cluster: {why}")
    hosts = TwoHosts(tmp_path_factory.mktemp("twohost"))
    try:
        yield hosts.up()
    finally:
        hosts.down()
        assert not hosts.leftovers(), f"two-host cluster left {hosts.leftovers()}"


@pytest.fixture(scope="session")
def two_node_slurm(two_hosts):
    """SLURM on the two hosts; clients reach it with `cluster.env()` (SLURM_CONF), os.environ is untouched."""
    from support.twohost import TwoNodeSlurm
    if not have_slurm_binaries():
        pytest.skip("SLURM is not installed here; CI installs it")
    cluster = TwoNodeSlurm(two_hosts)
    env = slurm_env(cluster.env())
    try:
        yield cluster.up()
    finally:
        # Jobs first (their slurmstepd are not children of slurmd), then the daemons (two_hosts.down).
        subprocess.run(["scancel", "--full", "--partition=two"], capture_output=True, timeout=60, env=env)
        for _ in range(60):
            out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %t"], capture_output=True, text=True, timeout=30, env=env)
            if out.returncode != 0 or not any(s in out.stdout for s in (" R", " CG", " PD")):
                break
            time.sleep(1)
