"""common.dist.on_main over two real processes (gloo): rank 0 alone runs the work, every rank gets its
result, and rank 0's UserError is raised on every rank with its class and words."""
import os

import torch.multiprocessing as mp

from support.runs import free_port


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as tdist

    from common import dist
    from common.data.files import DataError

    tdist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        ran = []
        result = dist.on_main(lambda: ran.append(rank) or f"listed by rank {rank}")

        def fail():
            raise DataError(f"rank {rank} could not read the tree")
        try:
            dist.on_main(fail)
            raised = None
        except DataError as e:
            raised = (type(e).__name__, str(e))
        after = dist.on_main(lambda: "still in step")  # no collective left pending by the error
        out[rank] = {"ran": ran, "result": result, "raised": raised, "after": after}
    finally:
        tdist.destroy_process_group()


def test_rank_0_runs_the_work_and_every_rank_shares_its_outcome():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), out), nprocs=2)
    assert out[0]["ran"] == [0] and out[1]["ran"] == []
    assert out[0]["result"] == out[1]["result"] == "listed by rank 0"
    assert out[0]["raised"] == out[1]["raised"] == ("DataError", "rank 0 could not read the tree")
    assert out[0]["after"] == out[1]["after"] == "still in step"
