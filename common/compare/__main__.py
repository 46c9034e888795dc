"""python -m common.compare RUN [RUN ...] [--to DIR]: compare runs as a table and pictures.

Each RUN is a run directory (its out_dir: config.yaml + metrics.jsonl) or a sweep directory
(trials.json), which means all its trials. Prints the markdown table and writes DIR/compare.md,
DIR/compare.csv, DIR/curves.png and, for trials, DIR/sweep.png. DIR defaults to SWEEP/compare for one
sweep, else runs/compare. Bad input: exit 2 with one line naming it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.compare import plots, table
from common.compare.runs import read, recipes_note
from common.config import UserError


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m common.compare", description=__doc__.split("\n")[0].partition(": ")[2])
    p.add_argument("runs", nargs="+", metavar="RUN", help="a run directory (out_dir) or a sweep directory (trials.json)")
    p.add_argument("--to", metavar="DIR", help="where the table and pictures go (default: SWEEP/compare for one "
                                              "sweep, else runs/compare)")
    return p.parse_args(argv)


def compare(argv: list[str] | None = None) -> Path:
    """The command: returns the directory written."""
    args = parse(argv)
    runs = read(args.runs)
    sweeps = {r.sweep for r in runs}
    to = Path(args.to) if args.to else (next(iter(sweeps)) / "compare" if len(sweeps) == 1 and None not in sweeps
                                        else Path("runs/compare"))
    try:
        to.mkdir(parents=True, exist_ok=True)
        md = table.markdown(runs)
        (to / "compare.md").write_text(md)
        (to / "compare.csv").write_text(table.csv_text(runs))
        ran = [r for r in runs if r.rows]  # a waiting trial has none yet
        pictures = [ran and plots.curves(ran, to / "curves.png"), plots.sweep(runs, to / "sweep.png")]
    except OSError as e:
        raise UserError(f"could not write the comparison into {to} ({e}); pass a writable --to DIR") from None
    note = recipes_note(runs)
    if note:
        print(note, file=sys.stderr)
    print(md.removesuffix(f"\n{note}\n" if note else ""), end="")
    print(f"wrote {to}/: compare.md, compare.csv, " + ", ".join(p.name for p in pictures if p))
    return to


def main(argv: list[str] | None = None) -> int:
    try:
        compare(argv)
    except UserError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
