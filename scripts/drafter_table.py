"""The fair training table: drafters trained from one base on the same text with the same CPU budget,
evaluated on the same prompts, side by side (docs/drafters.md shows it and how it was made).

    python scripts/drafter_table.py orthrus=build/fair/orthrus-view dflash=build/fair/dflash eagle3=build/fair/eagle3

Each argument is NAME=DIR, a trained model directory holding ``training.json`` (written by
``python -m orthrus train ...``) and ``eval.json`` (written by ``python -m orthrus evaluate ...
--write-card``). Reads files only; measures nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orthrus.train.evaluate import side_by_side


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="+", metavar="NAME=DIR")
    args = parser.parse_args(argv)
    methods = []
    for item in args.methods:
        name, sep, folder = item.partition("=")
        directory = Path(folder)
        missing = [f for f in ("training.json", "eval.json") if not (directory / f).is_file()]
        if not sep or not name or missing:
            what = f"{directory} has no {' or '.join(missing)}" if sep and name else "it is not NAME=DIR"
            print(f"error: {item!r}: {what}; give NAME=DIR for a directory that was trained and evaluated (--write-card).", file=sys.stderr)
            return 2
        methods.append((name, json.loads((directory / "eval.json").read_text()), json.loads((directory / "training.json").read_text())))
    print(side_by_side(methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
