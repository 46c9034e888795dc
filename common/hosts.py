"""Whether this host can be reached by the others in a multi-host job, before any collective.

gloo (and NCCL's bootstrap) bind the address the host name resolves to; when that is loopback
(Debian's '127.0.1.1 <hostname>' line) the job hangs in its first collective. host_facts reads
what decides it, loopback_warning says what to set. Pure functions of the host and environment.
"""
from __future__ import annotations

import ipaddress
import os
import socket


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def _resolve(name: str) -> list[str]:
    try:
        return sorted({ai[4][0] for ai in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)})
    except (OSError, UnicodeError):
        return []


def _interfaces() -> dict[str, str]:
    """{interface name: its IPv4 address} for the interfaces that have one (Linux; {} elsewhere)."""
    out = {}
    try:
        import fcntl
        import struct
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:  # SIOCGIFADDR
                    raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                    out[name] = socket.inet_ntoa(raw[20:24])
                except OSError:
                    pass
    except (ImportError, OSError):
        pass
    return out


def _route_source(addr: str) -> str:
    """The local address this host would use to reach `addr` (no packet is sent), or ''."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))
            return s.getsockname()[0]
    except OSError:
        return ""


def host_facts(info, env=os.environ) -> dict:
    """What decides whether gloo/NCCL on this host can be reached by the others; no collective.

    multi_host is what the environment already says before any process group: more processes in
    the job than on this node (torchrun, accelerate, deepspeed, mpirun), or a SLURM step on several
    nodes; a job whose MASTER_ADDR is written as a loopback address is on one host whatever the
    counts say (a name that resolves to loopback here may be the head node's own name).
    """
    host = socket.gethostname()
    master = env.get("MASTER_ADDR", "")
    master_addrs = _resolve(master) if master else []
    nodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_JOB_NUM_NODES", "1")) or 1) if info.launcher == "slurm" else 1
    multi = (info.world_size > info.local_world_size or nodes > 1) and not (master == "localhost" or _is_loopback(master))
    ifaces = _interfaces()
    # The interface to name: the one that routes to the master, else the first non-loopback one.
    source = next((_route_source(a) for a in master_addrs if not _is_loopback(a) and ":" not in a), "")
    iface = next((n for n, a in ifaces.items() if a == source and not _is_loopback(a)), "")
    iface = iface or next((n for n, a in ifaces.items() if not _is_loopback(a)), "")
    return {"host": host, "host_addrs": _resolve(host), "multi_host": multi,
            "backend_var": "NCCL_SOCKET_IFNAME" if info.device.type == "cuda" else "GLOO_SOCKET_IFNAME",
            "ifname_vars": sorted(k for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if env.get(k)),
            "iface": iface, "iface_addr": ifaces.get(iface, "")}


def loopback_warning(facts: dict) -> str:
    """'' or what to set when this host's name resolves to a loopback address in a multi-host job.

    gloo (and NCCL's bootstrap) bind the address the host name resolves to; with Debian's default
    '127.0.1.1 <hostname>' line in /etc/hosts that is loopback, the other hosts are told to connect
    to 127.0.1.1, fail ("Gloo connectFullMesh failed ... remote=[127.0.1.1]") and rank 0 waits for
    them until the timeout. Naming the interface (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME) fixes it.
    """
    loop = [a for a in facts["host_addrs"] if _is_loopback(a)]
    if not facts["multi_host"] or not loop or facts["ifname_vars"]:
        return ""
    iface = facts["iface"] or "<interface>"
    where = f", address {facts['iface_addr']}" if facts["iface_addr"] else ""
    also = f" and GLOO_SOCKET_IFNAME={iface}" if facts["backend_var"] == "NCCL_SOCKET_IFNAME" else ""
    return (f"host name {facts['host']} resolves to loopback address {', '.join(loop)} in a multi-host job: "
            f"the other hosts cannot connect to it and the job hangs in its first collective. "
            f"Set {facts['backend_var']}={iface}{also} (the interface that reaches the other nodes{where}), "
            f"or make the host name resolve to that address in /etc/hosts")


