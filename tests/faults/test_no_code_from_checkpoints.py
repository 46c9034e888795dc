"""No code from a checkpoint ever runs, under every engine: a real malicious pickle (its __reduce__
runs a shell command that creates a marker file) replaces a file the resume path reads, MANIFEST.json
is updated to match it (checksums pass: only the content is bad), and the run is started again.
It must stop with exit code 2 naming the file, and the marker must not exist."""
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from support.inprocess import run_inprocess
from support.runs import run_recipe
from support.launchutil import launch

pytestmark = pytest.mark.slow
DS = ("engine=deepspeed", "deepspeed_config=launch/deepspeed/zero2.json")


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(ckpt: Path, name: str, marker: Path) -> None:
    """Replace ckpt/name by its own content plus an Evil object, and make MANIFEST.json agree."""
    f = ckpt / name
    from common.engines.deepspeed_files import safe_types
    with torch.serialization.safe_globals(safe_types()):
        content = torch.load(f, map_location="cpu", weights_only=True)
    content["payload"] = Evil(marker)
    torch.save(content, f)
    manifest = json.loads((ckpt / "MANIFEST.json").read_text())
    manifest["files"][name] = {"size": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    (ckpt / "MANIFEST.json").write_text(json.dumps(manifest))
    assert not marker.exists()


def newest(out: Path) -> Path:
    return max((out / "checkpoints").glob("step_*"))


def test_ddp_state_pt_with_code_is_refused(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "MARKER"
    run_inprocess("mnist_mlp", f"out_dir={out}")
    plant(newest(out), "state.pt", marker)
    p = run_recipe("mnist_mlp", f"out_dir={out}", "train.max_steps=20", check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "could not be loaded safely" in p.stderr and "step_00000016" in p.stderr, p.stderr[-3000:]
    assert not marker.exists()


@pytest.fixture(scope="module")
def ds_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "run"
    launch("torchrun", "mnist_mlp", out, *DS)  # the same files as under the deepspeed launcher, sooner
    return out


@pytest.mark.parametrize("name", [pytest.param("deepspeed/net/state/mp_rank_00_model_states.pt",
                                               marks=pytest.mark.heavy),  # rank 1's file covers every rank
                                  "deepspeed/net/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"])
def test_deepspeed_files_with_code_are_refused_on_every_rank(ds_run, tmp_path, name):
    import shutil
    out, marker = tmp_path / "run", tmp_path / "MARKER"
    shutil.copytree(ds_run, out)
    plant(newest(out), name, marker)
    # the deepspeed launcher: its exit code is the ranks' (2), and it lets every rank finish its message
    p = launch("deepspeed", "mnist_mlp", out, *DS, "train.max_steps=20", check=False)
    assert p.returncode == 2, p.stdout[-3000:] + p.stderr[-3000:]
    refusals = [line for line in p.stderr.splitlines() if "could not be loaded safely" in line and name in line]
    assert len(refusals) == 2, p.stderr[-3000:]  # every rank stops with the same message
    assert "system" in refusals[0], refusals[0]  # it names the refused global (posix.system)
    assert not marker.exists()
