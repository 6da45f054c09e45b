"""Errors a user can cause: shown as one sentence, exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any


class UserInputError(ValueError):
    """Bad input from the user (a path, a setting, a suite key); the message names the fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one sentence plus a --help hint, raised as UserInputError
    (exit code 2 from every command line), never a usage dump; its subparsers are of this class too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(f"{message} (see {self.prog} --help).")


def remembering_interrupts(run: Callable[[], int], message: str) -> int:
    """``run()``'s exit code, with Ctrl-C raising KeyboardInterrupt as usual and also remembered: an
    interrupt that lands where it is lost (a finaliser, where Python swallows the exception, or a
    library that catches it during start-up) still ends the command with ``message`` and exit 130.
    Off the main thread (a command line driven from a thread, as tests and embedders do) Python allows
    no signal handler, and Ctrl-C goes to the main thread anyway: ``run()`` simply runs."""
    if threading.current_thread() is not threading.main_thread():
        return run()
    interrupted: list[int] = []

    def on_interrupt(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        code = run()
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted and code != 130:
        print(f"\n{message}", file=sys.stderr)
        return 130
    return code
