"""Run recipes as real processes (python or torchrun): commands, environments, exit codes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.harness import free_port  # noqa: F401 (the one copy, shared with bench's launchers)

ROOT = Path(__file__).resolve().parents[2]
FAULTY = Path(__file__).with_name("faulty.py")  # a recipe with a fault injected (run as a script)


def load_recipe(name: str):
    """Import recipes/<name>.py as a module (recipes are scripts, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def recipe_command(recipe: str, *overrides: str, nproc: int = 1, config: str | None = "debug",
                   env: dict | None = None, fault: str | None = None) -> tuple[list[str], dict]:
    """Command and environment for `python recipes/<recipe>.py` (nproc=1) or torchrun, CPU only.
    fault: run it through tests/support/faulty.py with that fault injected (e.g. "kill=1@25")."""
    script = [str(FAULTY), recipe, fault] if fault else [str(ROOT / "recipes" / f"{recipe}.py")]
    args = ["--config", str(ROOT / "recipes" / "configs" / f"{recipe}_{config}.yaml")] if config else []
    args += ["device=cpu", "train.progress=false", *overrides]
    if nproc == 1:
        cmd = [sys.executable, *script, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(free_port()), *script, *args]
    # One thread per process: runs compared bitwise must use the same reduction order.
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("RANK", None), full_env.pop("WORLD_SIZE", None)
    return cmd, full_env


def run_recipe(recipe: str, *overrides: str, nproc: int = 1, config: str | None = "debug",
               timeout: int = 300, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd, full_env = recipe_command(recipe, *overrides, nproc=nproc, config=config, env=env)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)
    if check:
        assert_finished(proc, out_dir_of(overrides))
    return proc


def run_ranks(cmd: list[str], env: dict, timeout: int = 600) -> tuple[list[int], subprocess.CompletedProcess]:
    """Each rank of a torchrun command (recipe_command's with nproc > 1, `--no-python` allowed) as a process of
    its own under env:// variables: (every rank's exit code, the ranks' output joined in rank order). Under
    torchrun the agent ends the other ranks once one has exited, so the codes it reports depend on timing."""
    args = cmd[3:]
    no_python = "--no-python" in args
    nproc, port = int(args[args.index("--nproc_per_node") + 1]), str(free_port())
    program = args[args.index("--master_port") + 2:]
    program = program if no_python else [sys.executable, *program]
    procs = [subprocess.Popen(program, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nproc),
                                   "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in range(nproc)]
    outs = [p.communicate(timeout=timeout) for p in procs]
    return ([p.returncode for p in procs],
            subprocess.CompletedProcess(program, max(p.returncode for p in procs),
                                        "".join(o for o, _ in outs), "".join(e for _, e in outs)))


def out_dir_of(overrides) -> Path | None:
    for o in overrides:
        if o.startswith("out_dir="):
            return Path(o.split("=", 1)[1])
    return None


def assert_finished(proc: subprocess.CompletedProcess, out_dir: Path | None = None) -> None:
    """Exit code 0 (on every rank: torchrun fails if any worker does); otherwise fail with the run's output."""
    tail = f"\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"exit code {proc.returncode}{tail}"
