"""--predict's files: the images --input names, where the CSV goes (a --to FILE checked), and writing it.

--input is an image (by its extension), a directory tree (its images, sorted directory by directory,
recursively, as the data loaders list them), or a text file of paths (one a line, relative to the text
file's directory; blank lines and lines starting with # skipped). The CSV has one row per image in that
order: path, class_1, prob_1, ..., class_K, prob_K, error (empty, or why the file could not be read).
"""
from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path

from common.config import UserError
from common.data.files import EXTENSIONS, list_images

DIRECTORY = "predictions"  # the default CSV: RUN/predictions/<input name>.csv (beside an export file: its directory's)


def list_inputs(path: Path) -> list[str]:
    """The image paths --input names, in order (an error when there are none)."""
    fix = "give an image, a directory of images, or a text file with one image path a line"
    if not path.exists():
        raise UserError(f"--input {path} does not exist; {fix}")
    if path.is_dir():
        found = [str(path / f) for f in list_images(path)]
        if not found:
            raise UserError(f"--input {path} holds no images ({', '.join(sorted(EXTENSIONS))}) in it or its "
                            f"sub-directories; {fix}")
        return found
    if path.suffix.lower() in EXTENSIONS:
        return [str(path)]
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--input {path} is not an image ({', '.join(sorted(EXTENSIONS))}) and cannot be read as a "
                        f"text file of paths ({type(e).__name__}: {e}); {fix}") from None
    found = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not found:
        raise UserError(f"--input {path} lists no image paths; {fix}")
    return [p if os.path.isabs(p) else str(path.parent / p) for p in found]


def default_csv(where: Path, source: Path) -> Path:
    """RUN_DIR/predictions/<input name>.csv (where: the run directory, else the checkpoint's or export's directory)."""
    return where / DIRECTORY / f"{(source.stem if source.is_file() else source.resolve().name) or 'input'}.csv"


def check_file(path: Path, replace: bool, made: bool, example: str = "predictions.csv") -> None:
    """A --to FILE (--predict's, --export's): refuse a directory, an existing file unless `replace`, a missing
    directory unless the path is the default (`made`: its folder is created)."""
    if path.is_dir():
        raise UserError(f"--to {path} is a directory; name a file in it, e.g. --to {path / example}")
    if path.exists() and not replace:
        raise UserError(f"{path} exists; add --overwrite to replace it, or choose another file with --to FILE")
    if not made and not path.parent.is_dir():
        raise UserError(f"--to {path}: the directory {path.parent} does not exist; create it or choose another "
                        "file with --to FILE")


def header(k: int) -> list[str]:
    return ["path", *(f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "prob")), "error"]


def write_csv(path: Path, k: int, rows: list[list]) -> None:
    """The CSV, written beside and renamed into place (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with replacing(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header(k))
            writer.writerows(rows)
        tmp.replace(path)


@contextlib.contextmanager
def replacing(path: Path, *temporaries: Path):
    """Around writing `temporaries` and renaming them into place: a failed write is a UserError naming `path`
    (what was there stays), and the temporaries are removed either way."""
    try:
        yield
    except OSError as e:
        raise UserError(f"could not write {path} ({e.strerror or e}); nothing was replaced. Free space or fix "
                        "permissions there, or choose another file with --to FILE") from None
    finally:
        for t in temporaries:
            t.unlink(missing_ok=True)
