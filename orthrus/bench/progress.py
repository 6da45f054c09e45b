"""Progress of a run: a tqdm bar on stderr, or nothing in a quiet (CI) run."""

from __future__ import annotations

import sys
from typing import Any


class NoBar:
    """The progress bar's interface without a bar: messages go to stderr (or nowhere, ``echo=False``)."""

    total = 0

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def write(self, text: str) -> None:
        if self.echo:
            print(text, file=sys.stderr)

    def close(self) -> None:
        pass


def progress_bar(total: int, quiet: bool) -> Any:
    """A tqdm bar over ``total`` measurements on stderr, or (quiet) one that shows nothing."""
    if quiet:
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=max(total, 0), unit="gen", dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
