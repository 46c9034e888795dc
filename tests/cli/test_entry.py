"""common.entry.run: the exit code a recipe process ends with, and what is done before it ends."""
import os
import subprocess
import sys

import pytest

from support.runs import ROOT, free_port

MAINS = {  # body of main() -> (exit code, text that must be in the output)
    "print('finished')": (0, "finished"),
    "raise SystemExit(75)": (75, ""),
    "raise SystemExit(2)": (2, ""),
    "raise SystemExit(None)": (0, ""),
    "raise SystemExit('bad input')": (1, "bad input"),
    "raise SystemExit(256)": (1, ""),  # the OS keeps 8 bits: 256 must not read as success
    "raise RuntimeError('boom')": (1, "RuntimeError: boom"),
}


def run_main(body: str) -> subprocess.CompletedProcess:
    code = ("import atexit, sys\n"
            "from common.entry import exit_after\n"
            "def main():\n"
            "    atexit.register(lambda: print('atexit ran'))\n"
            "    sys.stdout.write('unflushed ')\n"
            f"    {body}\n"
            "exit_after(main)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("body", list(MAINS))
def test_exit_code_and_orderly_end(body):
    expect, text = MAINS[body]
    p = run_main(body)
    assert p.returncode == expect, p.stderr[-2000:]
    out = p.stdout + p.stderr
    assert text in out
    # os._exit skips the interpreter's own exit: buffered output and atexit handlers are done by run()
    assert "unflushed" in p.stdout and "atexit ran" in p.stdout, out


def test_gloo_group_and_ddp_alive_at_exit_still_exit_0():
    """What a recipe leaves behind after training: DDP over gloo keeps the group's C++ threads alive
    past destroy_process_group. The process ends with 0, with no abort, every time."""
    code = ("import os, torch, torch.distributed as dist, torch.nn as nn\n"
            "from common.entry import exit_after\n"
            "def main():\n"
            "    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=os.environ['PORT'])\n"
            "    dist.init_process_group('gloo', rank=0, world_size=1)\n"
            "    global model\n"
            "    model = nn.parallel.DistributedDataParallel(nn.Linear(4, 4))\n"
            "    model(torch.randn(2, 4)).sum().backward()\n"
            "    threads = {open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')}\n"
            "    print('gloo threads alive:', 'pt_gloo_runloop' in threads)\n"
            "exit_after(main)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PORT": str(free_port()), "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0 and "gloo threads alive: True" in p.stdout, p.stdout + p.stderr[-2000:]
