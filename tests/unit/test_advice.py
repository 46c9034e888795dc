"""Messages whose advice the next command accepts: each names a fix that works, not one refused next."""
from __future__ import annotations

import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import torch

from common.config import ConfigError, UserError
from common.data.sampling import check_batch
from common.fields import APPLIED, Fixed, roles
from common.formats.checkpoint import refuse_code
from common.train.state import StateMismatch, TrainState
from support.runs import ROOT, load_recipe


def declared(test) -> set[str]:
    """The keys of any recipe whose declared role passes `test`."""
    return {k for p in (ROOT / "recipes").glob("*.py") for k, role in roles(load_recipe(p.stem).Config).items()
            if test(role)}


@pytest.mark.parametrize("batch, world, accum", [(32, 3, 1), (32, 5, 2), (96, 7, 1), (32, 64, 1)])
def test_an_indivisible_batch_names_process_counts_that_a_resume_accepts(batch, world, accum):
    with pytest.raises(ConfigError) as e:
        check_batch(batch, world, accum)
    counts = re.search(r"run on ([\d or]+) processes \(a resumed run keeps its global batch\)", str(e.value))
    assert counts, str(e.value)
    suggested = [int(n) for n in counts.group(1).split(" or ")]
    assert suggested and all(n != world for n in suggested)
    for n in suggested:  # the same global batch and grad_accum, on the suggested process count
        check_batch(batch, n, accum)


def test_a_batch_no_process_count_divides_names_grad_accum():
    with pytest.raises(ConfigError, match=r"change train\.grad_accum \(a resumed run keeps its global batch\), "
                                          r"or, for a new run, use train\.batch_size=30 or 33"):
        check_batch(32, 1, 3)
    check_batch(32, 1, 2)


def test_a_refused_partition_does_not_speak_of_resuming(tmp_path):
    """refuse_code guards --export and --evaluate as well as a resume."""
    f = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"x": Path("a")}, f)  # a pickled global
    with pytest.raises(UserError, match=rf"{f} could not be loaded safely .*refusing to load it\. Use another "
                                        r"checkpoint of the run \(checkpoints/step_N: resume=, --evaluate and --export") as e:
        refuse_code([f])
    assert "resum" not in str(e.value).split("refusing")[1].split("(")[0]


def test_usage_lists_every_key_an_after_training_command_applies():
    text = (ROOT / "docs" / "usage.md").read_text()
    listed = set(re.findall(r"`([\w.]+)`", text.split("**Which settings.**")[1].split("Training-only")[0]))
    applied = declared(lambda role: role.evaluate == APPLIED)
    assert "device" in applied and applied - listed == set()


def test_usage_lists_every_key_a_checkpoint_fixes():
    text = (ROOT / "docs" / "usage.md").read_text()
    listed = re.findall(r"`([\w.*]+)`", text.split("Settings a checkpoint fixes")[1].split("```")[0])
    fixed = declared(lambda role: isinstance(role.resume, Fixed) and not role.resume.engine)
    assert "seed" in fixed and {k for k in fixed if not any(fnmatchcase(k, p) for p in listed)} == set()


def _state(classes: int) -> TrainState:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, classes))
    return TrainState(models={"net": model}, optims={"net": torch.optim.SGD(model.parameters(), lr=0.1)})


def test_a_checkpoint_of_another_class_count_names_a_way_to_start_over_that_is_accepted():
    """resume=none alone is refused where checkpoints exist (tests/faults/test_run_dir.py): the advice names
    overwrite=true or a new out_dir."""
    sd = _state(2).state_dict({"seed": 0}, "test")
    with pytest.raises(StateMismatch, match=r"do not fit this model .* use the matching model config, or start over "
                                            r"in a new out_dir, or here with resume=none overwrite=true") as e:
        _state(3).load_state_dict(sd, "test")
    assert "use resume=none or" not in str(e.value)
    sd["format_version"] = 99
    with pytest.raises(StateMismatch, match=r"update dtrain, or start over in a new out_dir, or here with "
                                            r"resume=none overwrite=true"):
        _state(2).load_state_dict(sd, "test")
