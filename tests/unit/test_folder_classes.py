"""Class labels of an image folder, on both loaders (the in-memory one every classifier uses with
data.name=folder, and the streaming one of imagenet.py): train/ names the classes, every other tree is
labelled by name against them; and a symlinked directory is listed once, a loop is an error naming it."""
import dataclasses
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from common.data.files import DataError, list_images
from common.data.folder import FolderDataConfig, imagefolder_data
from common.data.classifier_data import classification_data
from support.images import fashion_tree

CLASSES = ["pullover", "trouser", "tshirt"]  # sorted folder names: the labels 0, 1, 2


class Rank:
    """What the loaders read from a Runtime, for one process; keeps what it logs."""

    def __init__(self):
        self.rank, self.world_size, self.is_main, self.logged = 0, 1, True, []
        self.device, self.memory_format = torch.device("cpu"), torch.contiguous_format

    def log(self, msg):
        self.logged.append(msg)


def config(root):
    data = dict(root=str(root), drop_last=True, augment=False, workers=0, image_size=16,  # the streaming loader
                name="folder", folder_shape=[1, 28, 28], pad_to=0, in_memory=True, mixup_alpha=0.0, cutmix_alpha=0.0)
    data = {**dataclasses.asdict(FolderDataConfig()), **data}  # the rest at imagenet.py's defaults
    return SimpleNamespace(seed=0, data=SimpleNamespace(**data),
                           train=SimpleNamespace(batch_size=8, grad_accum=1, eval_batch_size=16))


def build(loader, root, classes=None):
    rt = Rank()
    cfg = config(root)
    if loader == "stream":
        cfg.data.name = "imagefolder"
        out = imagefolder_data(cfg, rt) if classes is None else imagefolder_data(cfg, rt, classes=classes)
    else:
        out = classification_data(cfg, rt) if classes is None else classification_data(cfg, rt, classes=classes)
    return out, rt.logged


def eval_labels(loaders) -> list[int]:
    ev = loaders.eval
    return ev.labels.tolist() if hasattr(ev, "labels") else list(ev.ds.labels)


def train_labels(loaders) -> list[int]:
    tr = loaders.train
    return tr.labels.tolist() if hasattr(tr, "labels") else list(tr.ds.labels)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return fashion_tree(tmp_path_factory.mktemp("fashion"), train=8, val=4)


@pytest.fixture
def tree(full, tmp_path):
    """A copy of the full tree for a test to change."""
    return shutil.copytree(full, tmp_path / "tree", symlinks=True)


LOADERS = ["memory", "stream"]


@pytest.mark.parametrize("loader", LOADERS)
def test_the_full_tree_is_labelled_by_sorted_class_folders(full, loader):
    loaders, logged = build(loader, full)
    assert loaders.classes == CLASSES and loaders.num_classes == 3
    assert sorted(eval_labels(loaders)) == [0] * 4 + [1] * 4 + [2] * 4 and not logged


@pytest.mark.parametrize("loader", LOADERS)
def test_a_class_absent_from_val_keeps_the_others_labels_and_is_logged(tree, loader):
    shutil.rmtree(tree / "val" / "pullover")
    loaders, logged = build(loader, tree)
    assert loaders.classes == CLASSES and loaders.num_classes == 3
    assert sorted(eval_labels(loaders)) == [1] * 4 + [2] * 4  # trouser 1, tshirt 2: by name, not renumbered
    assert len(logged) == 1 and "has no images of 1 of the 3 classes ('pullover')" in logged[0], logged


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("change", ["val_has_an_extra_class", "train_lacks_a_class"])
def test_a_val_class_that_training_does_not_know_is_an_error_naming_it(tree, loader, change):
    if change == "val_has_an_extra_class":
        shutil.copytree(tree / "val" / "tshirt", tree / "val" / "sandal")
        unknown = "sandal"
    else:
        shutil.rmtree(tree / "train" / "pullover")
        unknown = "pullover"
    with pytest.raises(DataError, match=rf"val has class folder\(s\) '{unknown}' that the model does not know"):
        build(loader, tree)


@pytest.mark.parametrize("loader", LOADERS)
def test_a_trained_class_list_labels_another_tree_by_name(tree, loader):
    """What --evaluate does with the checkpoint's list: a tree lacking a class in train/ and val/ keeps
    the trained labels and the trained head size."""
    for split in ("train", "val"):
        shutil.rmtree(tree / split / "pullover")
    loaders, logged = build(loader, tree, classes=CLASSES)
    assert loaders.classes == CLASSES and loaders.num_classes == 3
    assert sorted(eval_labels(loaders)) == [1] * 4 + [2] * 4
    assert sorted(set(train_labels(loaders))) == [1, 2]
    assert any("'pullover'" in line for line in logged)
    shutil.copytree(tree / "val" / "tshirt", tree / "val" / "sandal")
    with pytest.raises(DataError, match=r"'sandal' that the model does not know: its 3 classes are the folders "
                                        r"of the training run's train/ \(saved in its checkpoint\)"):
        build(loader, tree, classes=CLASSES)


# ----------------------------------------------------------------------------- symbolic links

def test_a_symlinked_class_directory_is_followed(tree, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(tree / "train" / "trouser", elsewhere)
    (tree / "train" / "trouser").symlink_to(elsewhere)
    assert len([f for f in list_images(tree / "train") if f.startswith("trouser/")]) == 8
    assert len(list_images(tree / "train")) == 24


@pytest.mark.parametrize("loader", LOADERS)
def test_a_link_loop_is_an_error_naming_the_link(tree, loader):
    (tree / "train" / "tshirt" / "up").symlink_to("..")
    with pytest.raises(DataError, match=r"reached through the symbolic link \S*train/tshirt/up \(a link loop"):
        build(loader, tree)


def test_a_second_way_into_a_folder_is_an_error_naming_the_link(tree):
    (tree / "train" / "tshirt" / "also").symlink_to(os.path.join("..", "trouser"))
    with pytest.raises(DataError, match=r"symbolic link \S*train/tshirt/also"):
        list_images(tree / "train")


def test_two_link_loops_end_at_the_first(tree):
    """Each loop link multiplies a following walk's work: two of them kept os.walk listing for minutes."""
    for c in ("trouser", "tshirt"):
        (tree / "train" / c / "up").symlink_to("..")
    with pytest.raises(DataError, match=r"symbolic link \S*train/trouser/up \(a link loop"):
        list_images(tree / "train")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_an_unreadable_class_directory_is_an_error_naming_it(tree):
    """Not a silently smaller class: the walk stops naming the folder."""
    locked = tree / "train" / "trouser"
    locked.chmod(0)
    try:
        with pytest.raises(DataError, match=r"cannot list the image folder \S*train/trouser"):
            list_images(tree / "train")
    finally:
        locked.chmod(0o755)
