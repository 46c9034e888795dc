"""Image files on disk: which files a tree holds, their classes, and decoding one (a failure names the file).
Shared by the streaming folder loaders (common/data/folder.py) and the in-memory folder source
(common/data/datasets.py, data.name=folder for the classifiers)."""
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


EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


def list_images(root: Path) -> list[str]:
    """Image files under root (symlinked directories followed), relative, sorted directory by directory."""
    found = []
    for d, _, names in os.walk(root, followlinks=True):
        rel = Path(d).relative_to(root)
        found += [(rel / f).as_posix() for f in names if Path(f).suffix.lower() in EXTENSIONS]
    return sorted(found, key=lambda f: Path(f).parts)


def class_labels(files: list[str]) -> tuple[list[int], list[str]]:
    """Class = first sub-directory (the ImageFolder layout), sorted; files at the top level get class 0."""
    classes = sorted({Path(f).parts[0] for f in files if len(Path(f).parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    return [index[Path(f).parts[0]] if len(Path(f).parts) > 1 else 0 for f in files], classes


def decode(path: Path):
    """The file as an RGB PIL image; a truncated, empty or non-image file is a DataError naming it."""
    from PIL import Image
    try:
        with Image.open(path) as f:
            return f.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {e}); delete or replace the file") from None
