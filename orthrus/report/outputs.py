"""Where output may go: the checks made before any work (a folder that is a file, a read-only run
directory, a file path that is a folder) and the one sentence for a file-system error met anyway.

Used by the composition roots and by the report commands, so a bad output path costs seconds and
one sentence, never a traceback after the work is done.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from orthrus.errors import UserInputError


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable(path: Path) -> bool:
    """True when files can be created in the folder ``path`` (also False on a read-only file system)."""
    return os.access(path, os.W_OK | os.X_OK)


def check_output_dir(path: str | Path, flag: str) -> Path:
    """Before anything runs: ``path`` is a folder, or can be made one, and can be written to."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise UserInputError(f"{flag} {path}: {existing} is a file, not a folder; pass a folder.")
    if not writable(existing):
        raise UserInputError(f"{flag} {path}: {existing} is not writable (read-only); pass a folder you can write to.")
    return path


def check_output_file(path: str | Path, flag: str, example: str) -> Path:
    """Before anything runs: ``path`` names a file (not a folder) whose folder exists or can be made
    and is writable. ``example`` is a file name to suggest inside a folder given by mistake."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{flag} {path} is a folder; pass a file path such as {path / example}.")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise UserInputError(f"{flag} {path}: {existing} is a file, not a folder; pass a path inside a folder.")
    if not writable(existing) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserInputError(f"{flag} {path}: {existing} is not writable (read-only); pass a path you can write to.")
    return path


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def write_error(err: OSError) -> str:
    """One sentence for a file-system error met while writing output (the last line of defence;
    the usual cases are refused by the checks above before any work)."""
    where = f" {err.filename}" if err.filename else ""
    if err.errno in DISK_FULL:
        return f"the disk is full (writing{where}); free some space and run the command again."
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write{where} ({err.strerror}); pass an output path you can write to, or copy the run first."
    if err.errno == errno.ENOENT:
        return f"{err.filename or 'a file'} does not exist; check the path."
    if err.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        return f"cannot write{where} ({err.strerror}); a file and a folder are mixed up in that path, pick another."
    return f"cannot write{where} ({err.strerror or err}); check the path and run the command again."
