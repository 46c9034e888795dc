import pytest


# Fixtures backed by one machine-wide resource (the SLURM daemons on fixed ports, the simulated
# hosts' namespaces and subnets): under pytest-xdist every test using one runs on the same worker.
SHARED_CLUSTER = {"slurm_cluster", "two_hosts", "two_node_slurm"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SHARED_CLUSTER & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("cluster"))
