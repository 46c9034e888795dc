"""The loopback host-name check (common/dist.py), as a pure function of one rank's facts."""
from common.dist import check_layout
from common.hosts import loopback_warning

FACTS = {"host": "node1", "host_addrs": ["127.0.1.1"], "multi_host": True, "backend_var": "GLOO_SOCKET_IFNAME",
         "ifname_vars": [], "iface": "eth0", "iface_addr": "10.0.0.1"}


def test_warns_and_names_the_variable_and_interface():
    msg = loopback_warning(FACTS)
    assert "node1 resolves to loopback address 127.0.1.1" in msg and "GLOO_SOCKET_IFNAME=eth0" in msg
    gpu = loopback_warning({**FACTS, "backend_var": "NCCL_SOCKET_IFNAME"})
    assert "NCCL_SOCKET_IFNAME=eth0 and GLOO_SOCKET_IFNAME=eth0" in gpu


def test_silent_when_fine():
    assert loopback_warning({**FACTS, "host_addrs": ["10.0.0.1"]}) == ""
    assert loopback_warning({**FACTS, "multi_host": False}) == ""
    assert loopback_warning({**FACTS, "ifname_vars": ["GLOO_SOCKET_IFNAME"]}) == ""


def test_check_layout_notes_it_only_for_several_hosts():
    row = {"rank": 0, "world_size": 2, "local_rank": 0, "local_world_size": 1, "host": "a", "device": "cpu",
           "gpus": 0, "launcher": "torchrun", "gpu_uuid": "", "slurm_tasks_per_node": "", "slurm_nodes": 0,
           "slurm_job_tasks": 0, "loopback_warning": "host name a resolves to loopback"}
    errors, notes = check_layout([row, {**row, "rank": 1, "host": "b", "loopback_warning": ""}])
    assert not errors and notes == ["host a: host name a resolves to loopback"]
