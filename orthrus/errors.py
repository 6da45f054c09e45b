"""Errors a user can cause: shown as one sentence, exit code 2, never a traceback."""


class UserInputError(ValueError):
    """Bad input from the user (a path, a setting, a suite key); the message names the fix."""
