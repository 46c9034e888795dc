"""common.dist.on_main in one process (rank 0): the work's result is returned; its UserError is raised
again with its class and words, other errors propagate. Two ranks: tests/dist/test_on_main_ranks.py."""
import pytest

from common.config import ConfigError, UserError
from common.dist import on_main


def test_rank_0_runs_the_work_and_returns_its_result():
    done = []
    assert on_main(lambda: done.append(1) or "listing") == "listing"
    assert done == [1]


def test_a_user_error_is_raised_on_every_rank_with_its_words():
    def work():
        raise UserError("disk full")
    with pytest.raises(UserError, match="^disk full$"):
        on_main(work)


def test_the_user_error_keeps_its_class():
    def work():
        raise ConfigError("bad key")
    with pytest.raises(ConfigError, match="^bad key$"):
        on_main(work)


def test_any_other_error_propagates():
    with pytest.raises(ZeroDivisionError):
        on_main(lambda: 1 / 0)
