import pytest


# Fixtures backed by one machine-wide resource (the SLURM daemons on fixed ports, the simulated
# hosts' namespaces and subnets): under pytest-xdist every test using one runs on the same worker.
SHARED_CLUSTER = {"slurm_cluster", "two_hosts", "two_node_slurm"}


def _uses_a_module_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return bool(info) and any(d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups into the test ids
def pytest_collection_modifyitems(items):
    for item in items:
        if SHARED_CLUSTER & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("cluster"))
        elif _uses_a_module_fixture(item):
            # A module fixture (trained runs the tests share) is made once per worker that runs one of
            # its tests: keeping them on one worker makes it once.
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
