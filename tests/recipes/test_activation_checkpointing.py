"""train.activation_checkpointing=true recomputes each block's forward in backward: it must change no number.

ResNet blocks hold BatchNorm, which in training mode updates its running statistics on every forward;
the recomputation must not update them a second time (common/models/blocks.py restores them).
"""
import torch

from support.inprocess import run_inprocess
from support.outputs import final_weights


def test_activation_checkpointing_changes_no_number(tmp_path):
    steps = ("train.max_steps=4", "train.ckpt_every_steps=4", "train.eval_every_steps=4", "data.augment=false")
    plain = run_inprocess("resnet_cifar", f"out_dir={tmp_path / 'plain'}", *steps)
    ac = run_inprocess("resnet_cifar", f"out_dir={tmp_path / 'ac'}", *steps, "train.activation_checkpointing=true")
    assert "activation checkpointing: 10 blocks of ResNet" in ac.stdout and "activation checkpointing:" not in plain.stdout
    a, b = final_weights(tmp_path / "plain"), final_weights(tmp_path / "ac")
    assert any("running_mean" in k for k in a) and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
