"""Finished runs and dry runs exit 0 on every rank, back to back under CPU load (bench/exit_stress.py).

Before common/entry.py, 2-process runs could end in gloo's abort at interpreter exit
(std::terminate at interpreter exit, rc -6 / 250) now and then, more often on a
loaded machine. The full figure is `python bench/exit_stress.py` (50 runs); this is a short
version of the same loop. It counts exits, it does not time anything.
"""
import pytest

from bench.exit_stress import stress

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # bench/exit_stress.py runs the 50-run version


def test_back_to_back_two_process_runs_under_load_never_abort(tmp_path):
    rep = stress(runs=6, load=2, launcher="torchrun", out_root=tmp_path, verbose=False)
    assert rep["runs"] == 6 and rep["bad_runs"] == 0, rep["failures"]
    assert rep["nonzero_exits"] == 0 and rep["aborts"] == 0 and rep["exit_codes"] == [0]
    for i in range(0, 6, 2):  # the finished runs really trained to the end and wrote their checkpoint
        assert (tmp_path / f"run_{i}" / "checkpoints" / "step_00000008").is_dir()
