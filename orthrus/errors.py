"""Errors a user can cause: shown as one sentence, exit code 2, never a traceback."""

from __future__ import annotations

import argparse


class UserInputError(ValueError):
    """Bad input from the user (a path, a setting, a suite key); the message names the fix."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one sentence plus a --help hint, raised as UserInputError
    (exit code 2 from every command line), never a usage dump; its subparsers are of this class too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(f"{message} (see {self.prog} --help).")
