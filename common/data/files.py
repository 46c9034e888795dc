"""Image files on disk: which files a tree holds, their classes, and decoding one (a failure names the file).
Shared by the streaming folder loaders (common/data/folder.py) and the in-memory folder source
(common/data/datasets.py, data.name=folder for the classifiers).

A classifier's class list is its train/ sub-directories, sorted; every other tree (val/, or any tree an
after-training command reads) is labelled by folder name against that list, never numbered on its own."""
from __future__ import annotations

import os
from pathlib import Path

from common.config import UserError


class DataError(UserError):
    """A dataset problem the user can fix; the message says how."""

    def __init__(self, message: str = ""):
        # Raised in a DataLoader worker, it comes back rebuilt from "Caught DataError in DataLoader worker
        # process N.\nOriginal Traceback ...": the user gets the original one line, not the worker's traceback.
        tail = f"{type(self).__name__}: "
        if message.startswith("Caught ") and "Original Traceback" in message and tail in message:
            message = message.rsplit(tail, 1)[1].strip()
        super().__init__(message)


SAVED_CLASSES = "the training run's train/ (saved in its checkpoint)"  # where a trained model's class list comes from
EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


def list_images(root: Path) -> list[str]:
    """Image files under root, relative, sorted directory by directory. Symlinked directories are followed,
    but each real directory is listed once: a link back to one already on the walk (a loop, or a second
    way into the same folder) is a DataError naming the link, not duplicated files or an endless walk."""
    root = Path(root)
    found, seen, todo = [], {}, [Path()]
    while todo:
        rel = todo.pop()
        d = root / rel
        try:
            st = d.stat()
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise DataError(f"cannot list the image folder {d} ({e.strerror or e}); fix its permissions or "
                            "remove it") from None
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise DataError(_revisit(root, rel, seen[key]))
        seen[key] = rel
        subdirs = []
        for e in entries:
            if e.is_dir():  # follows a link
                subdirs.append(rel / e.name)
            elif Path(e.name).suffix.lower() in EXTENSIONS and e.is_file():
                found.append((rel / e.name).as_posix())
        todo += reversed(subdirs)
    return sorted(found, key=lambda f: Path(f).parts)


def _revisit(root: Path, rel: Path, first: Path) -> str:
    links = [q for p in (rel, first) for q in [*reversed(p.parents), p][1:] if (root / q).is_symlink()]
    link = f"the symbolic link {root / links[0]}" if links else "a bind mount or hard-linked directory"
    return (f"{root / rel} and {root / first} are the same directory, reached through {link} (a link loop, "
            "or a second way into one folder): its images would be listed twice, under the wrong class. "
            "Remove the link, or copy the images it should add")


def class_names(files: list[str]) -> list[str]:
    """The class names of a listing: its first-level sub-directories that hold images, sorted."""
    return sorted({Path(f).parts[0] for f in files if len(Path(f).parts) > 1})


def class_labels(files: list[str]) -> tuple[list[int], list[str]]:
    """Class = first sub-directory (the ImageFolder layout), sorted; files at the top level get class 0."""
    classes = class_names(files)
    index = {c: i for i, c in enumerate(classes)}
    return [index[Path(f).parts[0]] if len(Path(f).parts) > 1 else 0 for f in files], classes


def labels_by_name(files: list[str], classes: list[str], where: Path, known_from: str) -> list[int]:
    """Each file's label: the index of its class folder's name in `classes` (the list a model is trained
    on, from `known_from`). A class folder not in that list is a DataError naming it; a class of the list
    with no folder here is fine (absent_classes says which)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in class_names(files) if c not in index]
    if unknown:
        raise DataError(f"{where} has class folder(s) {_names(unknown)} that the model does not know: its {len(classes)} "
                        f"classes are the folders of {known_from} ({_names(classes)}); remove or rename "
                        f"{'them' if len(unknown) > 1 else 'it'}, or train with {'them' if len(unknown) > 1 else 'it'} in train/")
    return [index[Path(f).parts[0]] for f in files]


def absent_classes(files: list[str], classes: list[str], where: Path) -> str | None:
    """A log line naming the classes of `classes` with no images under `where`, else None."""
    missing = sorted(set(classes) - set(class_names(files)))
    if not missing:
        return None
    return (f"data: {where} has no images of {len(missing)} of the {len(classes)} classes ({_names(missing)}); "
            "its figures count the other classes only")


def class_change(saved: list[str] | None, now: list[str] | None) -> str | None:
    """How the class list `now` differs from `saved` (the classes a checkpoint's labels number), said with
    the fix; None when they agree or the checkpoint saved none (data read by name)."""
    now = now or []
    if not saved or list(saved) == list(now):
        return None
    gone, new = [c for c in saved if c not in now], [c for c in now if c not in saved]
    parts = ([f"missing {_names(gone)}"] if gone else []) + ([f"new {_names(new)}"] if new else [])
    return (f"{', '.join(parts) or 'the same names in another order'}  (the checkpoint's labels number its "
            f"{len(saved)} classes {_names(saved)}: train/ must hold exactly these folders)")


def _names(classes: list[str], limit: int = 10) -> str:
    more = f" and {len(classes) - limit} more" if len(classes) > limit else ""
    return ", ".join(repr(c) for c in classes[:limit]) + more


def decode(src, where=None):
    """An image file (a path, or its bytes read from a folder or a shard, named by `where`) as an RGB PIL image;
    a truncated, empty or non-image file is a DataError naming it."""
    import io
    from PIL import Image
    where = src if where is None else where
    opened = io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src
    try:
        with Image.open(opened) as f:
            f.load()
            return f if f.mode == "RGB" else f.convert("RGB")  # a JPEG is RGB already: no copy
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        said = str(e).replace(repr(opened), str(where))  # PIL names the buffer by its address
        raise DataError(f"cannot read image {where} ({type(e).__name__}: {said}); delete or replace the file") from None
