"""Multi-node launch paths on a simulated two-host cluster (tests/support/twohost.py).

Two network namespaces with their own hostnames and /etc/hosts, one private /24 on a bridge;
torchrun's c10d rendezvous, launch/torchrun_multinode.sh and the multi-node sbatch templates run
across them unchanged, recipes on CPU over gloo. What this does not prove (one kernel, one file
system, no NCCL or InfiniBand) is listed in slurm/README.md.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from support.runs import ROOT
from support.outputs import final_weights, metrics
from support.launchutil import (assert_job_ok, clean_env, deepspeed_weights, max_abs_diff, recipe_args, sbatch, state,
                        wait_job)
from support.twohost import HOSTS, TwoHosts, kill_tree, wait_all, wait_for

pytestmark = pytest.mark.slow

HEAD = HOSTS[0]
RECIPE = str(ROOT / "recipes" / "mnist_mlp.py")
# Long enough to preempt or kill mid-run, short enough for CI; checkpoints every 100 steps.
LONG_ARGS = ("train.max_steps=400", "train.log_every_steps=10", "train.eval_every_steps=200",
             "train.ckpt_every_steps=100", "model.hidden=[256]")


def _env(tmp_path: Path, **extra) -> dict:
    """CPU env for a host; `nvidia-smi` is a stub that fails like a missing one (exit 127), so the
    GPU count torchrun_multinode.sh derives is the same on CI machines with and without GPUs."""
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "nvidia-smi").write_text("#!/bin/sh\necho 'nvidia-smi: command not found' >&2\nexit 127\n")
    (stub / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in clean_env({"DS_ACCELERATOR": "cpu"}).items() if k != "GPUS"}
    return {**env, "PATH": f"{stub}:{env['PATH']}", **extra}


def _torchrun(nproc: int, port: int, run_id: str, *args: str, max_restarts: int = 0) -> list[str]:
    return ["torchrun", "--nnodes=2", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={HEAD}:{port}", f"--rdzv_id={run_id}", f"--max_restarts={max_restarts}", *args]


def _on_both(hosts: TwoHosts, tmp_path: Path, argv: list[str], env: dict, name: str) -> tuple[list, list[Path]]:
    logs = [tmp_path / f"{name}.{h}.log" for h in HOSTS]
    procs = [hosts.spawn(h, argv, env, log, cwd=ROOT) for h, log in zip(HOSTS, logs)]
    return procs, logs


def _finish(procs, logs, timeout: float = 300) -> list[str]:
    codes = wait_all(procs, timeout)
    texts = [log.read_text() for log in logs]
    for code, text, log in zip(codes, texts, logs):
        assert code == 0, f"{log.name} exited {code}:\n{text[-5000:]}"
    return texts


# ----------------------------------------------------------------------------- the cluster itself

def test_cluster_hosts_have_own_names_addresses_and_no_route_out(two_hosts):
    env = clean_env()
    probe = ("import socket; print(socket.gethostname(), socket.gethostbyname(socket.gethostname()));"
             "s = socket.socket(); s.settimeout(5)\n"
             "try:\n s.connect(('192.0.2.1', 80)); print('ROUTED')\nexcept OSError as e: print('unreachable', e.errno)")
    seen = {}
    for h in HOSTS:
        out = two_hosts.run(h, ["python3", "-c", probe], env, timeout=60)
        assert out.returncode == 0, out.stderr
        seen[h] = out.stdout.split()
        assert seen[h][:2] == [h, two_hosts.addr[h]] and seen[h][2] == "unreachable", out.stdout
    # The second host reaches the first by name over the bridge.
    server = two_hosts.spawn(HEAD, ["python3", "-c", "import socket; s = socket.create_server(('', 23456)); "
                                    "c, a = s.accept(); c.sendall(a[0].encode())"], env, two_hosts.base / "srv.log")
    client = ("import socket, time\nfor _ in range(100):\n try:\n  c = socket.create_connection(('dtmn1', 23456), 5); break\n"
              " except ConnectionRefusedError: time.sleep(0.2)\nprint(c.recv(64).decode())")
    out = two_hosts.run(HOSTS[1], ["python3", "-c", client], env, timeout=60)
    assert out.stdout.strip() == two_hosts.addr[HOSTS[1]], out.stderr
    server.wait(timeout=30)


def test_cluster_setup_is_fast_and_teardown_leaves_nothing(tmp_path):
    from support.twohost import have_tools
    if have_tools():
        pytest.skip(have_tools())
    hosts = TwoHosts(tmp_path / "c")
    hosts.tag += "t"  # not the session cluster's names
    hosts.bridge = f"{hosts.tag}br"
    hosts.netns = {h: f"{hosts.tag}-{h}" for h in HOSTS}
    hosts.subnet = hosts.subnet.replace("10.77.", "10.78.")
    hosts.addr = {h: f"{hosts.subnet}.{i + 1}" for i, h in enumerate(HOSTS)}
    hosts.bridge_addr = f"{hosts.subnet}.254"
    t0 = time.time()
    try:
        hosts.up()
        setup = time.time() - t0
        sleeper = hosts.spawn(HOSTS[1], ["sleep", "600"], clean_env(), tmp_path / "sleep.log")
        assert hosts.leftovers()
    finally:
        hosts.down()
    assert sleeper.poll() is not None
    assert hosts.leftovers() == []
    print(f"two-host setup took {setup:.2f} s")


# ----------------------------------------------------------------------------- torchrun

def test_torchrun_c10d_dry_run_spans_two_hosts(two_hosts, tmp_path):
    argv = _torchrun(1, 29400, "dry", *recipe_args("mnist_mlp", None, "--dry-run"))
    texts = _finish(*_on_both(two_hosts, tmp_path, argv, _env(tmp_path), "dry"), timeout=240)
    head = texts[0]
    assert f"rank 0/2 local_rank 0/1 host {HOSTS[0]}" in head and f"rank 1/2 local_rank 0/1 host {HOSTS[1]}" in head, head
    assert "layout ok: 2 process(es) on 2 host(s)" in head, head
    assert "warning" not in "".join(texts)


@pytest.fixture(scope="module")
def reference(two_hosts, tmp_path_factory):
    """An uninterrupted two-node run (launch/torchrun_multinode.sh, GPUS unset, no nvidia-smi):
    the weights the preempted and the killed runs must end with."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "run"
    argv = ["bash", str(ROOT / "launch/torchrun_multinode.sh"), *recipe_args("mnist_mlp", out, *LONG_ARGS)]
    env = _env(tmp, HEAD=HEAD, NNODES="2", PORT="29401", RUN_ID="reference")
    texts = _finish(*_on_both(two_hosts, tmp, argv, env, "ref"), timeout=420)
    return out, texts


def test_torchrun_multinode_sh_without_gpus_and_nvidia_smi(reference):
    out, texts = reference
    for h, text in zip(HOSTS, texts):
        assert f"torchrun_multinode: {h}: 1 process(es), rendezvous {HEAD}:29401" in text, text[-3000:]
    sd = state(out, 400)
    assert sd["world_size"] == 2 and len(sd["rng"]) == 2


@pytest.mark.heavy  # the script on two hosts: the reference run above
def test_torchrun_multinode_sh_with_gpus_set(two_hosts, tmp_path):
    out = tmp_path / "run"
    argv = ["bash", str(ROOT / "launch/torchrun_multinode.sh"), *recipe_args("mnist_mlp", out)]
    env = _env(tmp_path, HEAD=HEAD, NNODES="2", GPUS="2", PORT="29402", RUN_ID="gpus2")
    texts = _finish(*_on_both(two_hosts, tmp_path, argv, env, "gpus2"), timeout=300)
    for h, text in zip(HOSTS, texts):
        assert f"torchrun_multinode: {h}: 2 process(es)" in text
    sd = state(out, 16)
    assert sd["world_size"] == 4 and len(sd["rng"]) == 4


def _worker_pids(root_pid: int) -> list[int]:
    """The recipe processes a torchrun under `root_pid` started (their parent is the agent)."""
    from support.twohost import _children
    kids, found, todo = _children(), [], [root_pid]

    def cmdline(pid):
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return b""
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        for c in kids.get(p, []):
            parent = cmdline(p)
            if b"mnist_mlp.py" in cmdline(c) and (b"torchrun" in parent or b"torch.distributed.run" in parent):
                found.append(c)
    return found


def test_sigkilled_worker_on_second_host_restarts_and_matches(two_hosts, reference, tmp_path):
    """torchrun --max-restarts=1: a worker on the second host dies (SIGKILL) after the first
    checkpoint; both agents restart their workers, which resume from that checkpoint and end
    with exactly the weights of the uninterrupted run."""
    out = tmp_path / "run"
    argv = _torchrun(1, 29403, "killed", *recipe_args("mnist_mlp", out, *LONG_ARGS), max_restarts=1)
    procs, logs = _on_both(two_hosts, tmp_path, argv, _env(tmp_path), "killed")
    try:
        wait_for(lambda: (out / "checkpoints" / "step_00000100").exists(), 300, "the first checkpoint")
        victims = wait_for(lambda: _worker_pids(procs[1].pid), 30, "the worker on the second host")
        assert len(victims) == 1, victims
        os.kill(victims[0], 9)
    except BaseException:
        for p in procs:
            kill_tree(p.pid)
        raise
    texts = _finish(procs, logs, timeout=420)
    assert "(exitcode: -9)" in texts[1], texts[1][-3000:]  # the killed worker, seen by its agent
    # The restarted group (ranks on both hosts) resumed from a checkpoint at or after step 100.
    assert f"resumed from {out}/checkpoints/step_" in "".join(texts), texts[0][-4000:]
    assert max_abs_diff(final_weights(out), final_weights(reference[0])) == 0.0


# ----------------------------------------------------------------------------- loopback host names

def test_loopback_hostname_warns_before_the_hang_and_ifname_fixes_it(two_hosts, tmp_path):
    """Debian's '127.0.1.1 <hostname>' line: gloo binds loopback and the peer cannot connect. Each
    rank warns before init_process_group, naming GLOO_SOCKET_IFNAME and the interface; the run fails
    (bounded here by dist_timeout_s) instead of training. GLOO_SOCKET_IFNAME=eth0 makes it work."""
    try:
        for h in HOSTS:
            two_hosts.write_hosts(h, loopback_self=True)
        argv = _torchrun(1, 29404, "loop", *recipe_args("mnist_mlp", None, "dist_timeout_s=30", "--dry-run"))
        procs, logs = _on_both(two_hosts, tmp_path, argv, _env(tmp_path), "loop")
        try:
            # One rank fails to connect to the other's 127.0.1.1; the other may wait for it until
            # its timeout (minutes): stop everything once the first torchrun has ended.
            wait_for(lambda: any(p.poll() is not None for p in procs), 240, "the first torchrun to fail")
            assert [p.returncode for p in procs if p.poll() is not None] != [0]
        finally:
            for p in procs:
                kill_tree(p.pid)
                p.wait(timeout=60)
        texts = [log.read_text() for log in logs]
        for h, text in zip(HOSTS, texts):
            assert (f"host name {h} resolves to loopback address 127.0.1.1 in a multi-host job" in text
                    and "Set GLOO_SOCKET_IFNAME=eth0 (the interface that reaches the other nodes, address "
                    f"{two_hosts.addr[h]})" in text), text[-4000:]
        both = "".join(texts)
        assert "Gloo connectFullMesh failed" in both and "remote=[127.0.1.1]" in both, both[-4000:]
        assert "layout ok" not in texts[0]
        # Named interface: the same hosts files, no warning, the job runs.
        argv = _torchrun(1, 29405, "loopfix", *recipe_args("mnist_mlp", None, "--dry-run"))
        fixed = _finish(*_on_both(two_hosts, tmp_path, argv, _env(tmp_path, GLOO_SOCKET_IFNAME="eth0"), "fix"), 240)
        assert "layout ok: 2 process(es) on 2 host(s)" in fixed[0], fixed[0][-3000:]
        assert "loopback" not in "".join(fixed)
    finally:
        for h in HOSTS:
            two_hosts.write_hosts(h)


# ----------------------------------------------------------------------------- SLURM, two nodes

def _sargs(out_dir, *extra):
    return recipe_args("mnist_mlp", out_dir, *extra)[1:]  # the template gets the recipe path first


def _opts(gpus: int, ntasks: int = 1) -> tuple[str, ...]:
    return ("--nodes=2", f"--ntasks-per-node={ntasks}", f"--gpus-per-node={gpus}", "--cpus-per-task=1", "--time=10")


TWO_NODE_TEMPLATES = [  # template, processes per node, sbatch options, engine
    pytest.param("multi_node.sbatch", 1, _opts(1), "ddp", marks=pytest.mark.heavy),  # 2 per node covers it
    ("multi_node.sbatch", 2, _opts(2), "ddp"),
    pytest.param("srun_per_gpu.sbatch", 1, _opts(1), "ddp", marks=pytest.mark.heavy),  # single node: test_slurm.py
    ("accelerate_multi_node.sbatch", 1, _opts(1), "accelerate"),
    ("deepspeed_multi_node.sbatch", 1, _opts(1), "deepspeed"),
]


@pytest.mark.parametrize("template,per_node,options,engine", TWO_NODE_TEMPLATES,
                         ids=["{}-{}per-node".format(*getattr(t, "values", t)) for t in TWO_NODE_TEMPLATES])
def test_template_on_two_nodes(two_node_slurm, template, per_node, options, engine, tmp_path):
    env = two_node_slurm.env()
    out, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(template, RECIPE, *_sargs(out), options=options, log=log, env=env)
    text = assert_job_ok(wait_job(job, timeout=400, env=env), log, out)
    assert "dtrain: step exited with 0" in text, text[-4000:]
    assert f"on {HOSTS[0][:-1]}[1-2]: 2 node(s) x {per_node} GPU(s), head {HEAD}:" in text, text[:2000]
    sd = state(out, 16)
    assert sd["world_size"] == 2 * per_node and len(sd["rng"]) == 2 * per_node, text[-3000:]
    assert sd["config"]["engine"] == engine
    assert [r["step"] for r in metrics(out) if r["split"] == "val"] == [8, 16]
    if engine == "deepspeed":
        assert deepspeed_weights(out, 16)  # the two ZeRO partitions, one per node, reassembled


def test_preempted_two_node_job_requeues_resumes_and_matches(two_node_slurm, reference, tmp_path):
    """multi_node.sbatch on both nodes: the preemption signal reaches both torchruns' workers,
    they checkpoint and exit 75, the job requeues itself, resumes on two nodes and ends with the
    weights of the uninterrupted two-node run."""
    env = two_node_slurm.env()
    out, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch("multi_node.sbatch", RECIPE, *_sargs(out, *LONG_ARGS), options=_opts(1), log=log, env=env)
    wait_for(lambda: any(r["step"] >= 30 for r in metrics(out)), 300, f"job {job} to train")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, env={**os.environ, **env}, timeout=60)
    info = wait_job(job, timeout=500, env=env)
    text = assert_job_ok(info, log, out)
    assert info["Restarts"] == "1", info
    assert "dtrain: preemption signal" in text and f"requeueing job {job}" in text, text[-4000:]
    saved = int(text.split("preempted: checkpoint at step ")[1].split()[0])
    assert 30 <= saved < 400
    assert f"resumed from {out}/checkpoints/step_{saved:08d}: step {saved}" in text, text[-4000:]
    assert text.count("2 node(s) x 1 GPU(s)") == 2  # both runs of the job on both nodes
    assert state(out, 400)["world_size"] == 2
    assert max_abs_diff(final_weights(out), final_weights(reference[0])) == 0.0
    losses = [(r["step"], r["loss"]) for r in metrics(out) if r["split"] == "train"]
    assert losses == [(r["step"], r["loss"]) for r in metrics(reference[0]) if r["split"] == "train"]
