"""A simulated two-host cluster on one Linux machine (root), for test_two_hosts.py.

Each "host" is a network namespace with its own veth link into a bridge this module creates, an
address in one private /24 (10.77.N.0/24, no default route: nothing leaves it), and, per command,
its own hostname (UTS namespace) and its own /etc/hosts (a private mount namespace with a bind
mount). Commands enter a host with `nsenter --net=/run/netns/<ns>` plus `unshare --uts --mount`
rather than `ip netns exec`, which remounts /sys and hides /sys/fs/cgroup (slurmd needs it).
The bridge itself gets the .254 address, so a SLURM controller in the root namespace reaches both
hosts' slurmd (and they reach it); one munged in the root namespace serves both through its socket.

Everything this module starts is tracked by pid and stopped in `down()` together with its
descendants; `down()` also deletes the namespaces and links, and runs from the fixtures' finally.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

HOSTS = ("dtmn1", "dtmn2")


def have_tools() -> str:
    """'' when this machine can build the cluster, else why not."""
    if os.geteuid() != 0 or not Path("/proc/self/ns/net").exists():
        return "needs root on Linux (network, UTS and mount namespaces)"
    missing = [t for t in ("ip", "nsenter", "unshare", "mount") if not shutil.which(t)]
    return f"missing {', '.join(missing)} (iproute2, util-linux)" if missing else ""


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def kill_tree(pid: int, timeout: float = 10) -> None:
    """SIGTERM `pid` and every descendant (found by parent pid, so also those that left its
    session, like torchrun's workers), then SIGKILL whatever is left after `timeout` seconds."""
    kids, tree, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += kids.get(p, [])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in tree:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() and _state(p) != "Z" for p in tree):
            time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


class TwoHosts:
    def __init__(self, base: Path):
        self.base = Path(base)
        n = os.getpid() % 200 + 20  # concurrent test sessions get different names and subnets
        self.tag = f"dm{os.getpid() % 100000}"
        self.subnet = f"10.77.{n}"
        self.addr = {h: f"{self.subnet}.{i + 1}" for i, h in enumerate(HOSTS)}
        self.bridge, self.bridge_addr = f"{self.tag}br", f"{self.subnet}.254"
        self.netns = {h: f"{self.tag}-{h}" for h in HOSTS}
        self.procs: list[subprocess.Popen] = []
        self.hosts_file = {h: self.base / f"hosts.{h}" for h in HOSTS}
        self.controller = socket.gethostname()

    # -- lifecycle ------------------------------------------------------------------------
    def up(self) -> "TwoHosts":
        self.base.mkdir(parents=True, exist_ok=True)
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", f"{self.bridge_addr}/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        for i, h in enumerate(HOSTS):
            ns, veth = self.netns[h], f"{self.tag}v{i + 1}"
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "link", "set", veth, "master", self.bridge, "up")
            _sh("ip", "-n", ns, "addr", "add", f"{self.addr[h]}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            self.write_hosts(h)
        return self

    def write_hosts(self, host: str, loopback_self: bool = False) -> Path:
        """The host's /etc/hosts: every host's address, or (loopback_self) Debian's default
        '127.0.1.1 <own name>' line for its own name, the trap that makes gloo bind loopback."""
        lines = ["127.0.0.1 localhost"]
        for h in HOSTS:
            lines.append(f"127.0.1.1 {h}" if loopback_self and h == host else f"{self.addr[h]} {h}")
        lines.append(f"{self.bridge_addr} {self.controller}")
        self.hosts_file[host].write_text("\n".join(lines) + "\n")
        return self.hosts_file[host]

    def down(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                kill_tree(p.pid)
            p.wait(timeout=30)
        self.procs.clear()
        for i, h in enumerate(HOSTS):
            subprocess.run(["ip", "link", "del", f"{self.tag}v{i + 1}"], capture_output=True, timeout=30)
            subprocess.run(["ip", "netns", "del", self.netns[h]], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=30)

    def leftovers(self) -> list[str]:
        """Namespaces and links of this cluster that still exist (empty after down())."""
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30).stdout
        ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
        return [w for w in (links + ns).replace(":", " ").replace("@", " ").split() if w.startswith(self.tag)]

    # -- running things on a host ---------------------------------------------------------
    def wrap(self, host: str, argv: list[str]) -> list[str]:
        """argv run on `host`: its network namespace, its hostname, its /etc/hosts."""
        return ["nsenter", f"--net=/run/netns/{self.netns[host]}", "unshare", "--uts", "--mount", "sh", "-c",
                'hostname "$1" && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"', "sh",
                host, str(self.hosts_file[host]), *map(str, argv)]

    def spawn(self, host: str, argv: list[str], env: dict, log: Path, cwd: Path | None = None) -> subprocess.Popen:
        env = {k: v for k, v in env.items() if k != "HOSTNAME"}
        with open(log, "ab") as f:
            p = subprocess.Popen(self.wrap(host, argv), env=env, stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
        self.procs.append(p)
        return p

    def run(self, host: str, argv: list[str], env: dict, timeout: float = 60, cwd: Path | None = None):
        env = {k: v for k, v in env.items() if k != "HOSTNAME"}
        return subprocess.run(self.wrap(host, argv), env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """Exit codes of `procs`; on timeout kills them all (and their descendants) and raises."""
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    kill_tree(q.pid)
            raise AssertionError(f"processes did not finish within {timeout} s")
    return [p.returncode for p in procs]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- SLURM on the two hosts

SLURM_CONF = """# Written by tests/support/twohost.py: two nodes in network namespaces, controller in the root one.
ClusterName=dtrain2
SlurmctldHost={ctl}({ctl_addr})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket,cred_expire=10
StateSaveLocation={dir}/ctld
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerParameters=sched_interval=1,defer_batch
MessageTimeout=20
KillWait=10
MinJobAge=600
SlurmdTimeout=60
SlurmdParameters=config_overrides
GresTypes=gpu
{nodes}
PartitionName=two Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""


class TwoNodeSlurm:
    """munged + slurmctld (root namespace) and one slurmd per host, all in the foreground and
    tracked by pid through the TwoHosts they run on. Ports differ from slurm_cluster.sh's."""

    def __init__(self, hosts: TwoHosts):
        self.hosts = hosts
        self.dir = hosts.base / "slurm"
        self.conf = self.dir / "slurm.conf"
        port = 17000 + 2 * (os.getpid() % 400)
        self.ctld_port, self.slurmd_port = port, port + 1

    def env(self) -> dict:
        return {"SLURM_CONF": str(self.conf)}

    def up(self) -> "TwoNodeSlurm":
        h = self.hosts
        for d in ("ctld", "spool", "munge"):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755), os.chmod(self.dir / "munge", 0o755)
        nodes = "\n".join(f"NodeName={n} NodeAddr={h.addr[n]} CPUs=8 RealMemory=1000 Gres=gpu:4 State=UNKNOWN"
                          for n in HOSTS)
        self.conf.write_text(SLURM_CONF.format(ctl=h.controller, ctl_addr=h.bridge_addr, dir=self.dir,
                                               ctld_port=self.ctld_port, slurmd_port=self.slurmd_port,
                                               nodes=nodes, names=",".join(HOSTS)))
        (self.dir / "gres.conf").write_text("".join(
            f"NodeName={n} Name=gpu File={f}\n" for n in HOSTS for f in ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")))
        if not Path("/etc/munge/munge.key").exists():
            _sh("mungekey", "--create", "--keyfile", "/etc/munge/munge.key")
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        m = self.dir / "munge"
        self._root(["munged", "--foreground", "--force", "--socket", f"{m}/munge.socket", "--pid-file", f"{m}/munged.pid",
                    "--log-file", f"{m}/munged.log", "--seed-file", f"{m}/munged.seed"], env, "munged.out")
        wait_for(lambda: (m / "munge.socket").exists(), 30, "munged's socket")
        self._root(["slurmctld", "-D", "-f", str(self.conf)], env, "slurmctld.out")
        for n in HOSTS:
            h.spawn(n, ["slurmd", "-D", "-f", str(self.conf), "-N", n], env, self.dir / f"slurmd-{n}.out")

        def idle():
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=env, timeout=30)
            states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
            return len(states) == 2 and all(s.startswith(("idle", "mix")) for s in states.values())
        try:
            wait_for(idle, 90, "both slurmd to register as idle", interval=0.5)
        except AssertionError:
            logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.dir.glob("*.log")))
            raise AssertionError(f"two-node SLURM did not come up; logs:{logs}") from None
        return self

    def _root(self, argv, env, log):
        with open(self.dir / log, "ab") as f:
            p = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        self.hosts.procs.append(p)
        return p
