"""common.dist.on_main in one process: rank 0 runs the work; its UserError is raised again, others propagate."""
from types import SimpleNamespace

import pytest

from common.config import UserError
from common.dist import on_main


def test_rank_0_runs_the_work():
    done = []
    on_main(SimpleNamespace(is_main=True), lambda: done.append(1))
    on_main(SimpleNamespace(is_main=False), lambda: done.append(2))
    assert done == [1]


def test_a_user_error_is_raised_on_every_rank_with_its_words():
    def work():
        raise UserError("disk full")
    with pytest.raises(UserError, match="^disk full$"):
        on_main(SimpleNamespace(is_main=True), work)


def test_any_other_error_propagates():
    with pytest.raises(ZeroDivisionError):
        on_main(SimpleNamespace(is_main=True), lambda: 1 / 0)
