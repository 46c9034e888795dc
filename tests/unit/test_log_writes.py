"""metrics.jsonl, TensorBoard and sample-grid writes on a real full tmpfs (tests/tmpfs.py, needs root):
the Logger raises the same CheckpointError as a failed checkpoint (exit 2 naming the newest intact
checkpoint; with several ranks it is broadcast by checkpoint.writes_agreed, like a checkpoint's)."""
import pytest
import torch

from common.train.checkpoint import CheckpointError, Checkpointer
from common.train.log import Grid, Logger
from tmpfs import tmpfs  # noqa: F401 (a fixture)


@pytest.mark.parametrize("what", ["metrics", "samples"])
# TensorBoard's writer thread fails too; its traceback must not be printed ahead of the one message
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_full_disk_while_logging_names_the_intact_checkpoint(tmpfs, what):
    fs = tmpfs("2m")
    Checkpointer(fs.path / "checkpoints").save({"w": torch.zeros(4)}, 8)
    logger = Logger(fs.path, enabled=True)
    logger.log("train", 1, 0, {"loss": 1.0})
    fs.fill(leave_bytes=0)
    # more than the free slack in the files' last pages: the write must need a new page
    values = {f"metric{i}": 0.5 for i in range(500)} if what == "metrics" else {"fake": Grid(torch.rand(64, 3, 64, 64) * 2 - 1)}
    with pytest.raises(CheckpointError, match=f"(?i)no space left on device.*newest intact checkpoint is "
                                              f"{fs.path}/checkpoints/step_00000008\\."):
        logger.log("train", 2, 0, values)
    logger.close()  # reports, does not raise: the error above is the one that ends the run
