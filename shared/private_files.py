"""Directories and files only their owner can read: the SQLite databases (password hashes,
personal data) and the logs (emails in a line, tokens in a traceback) of a local run.

The modes are set explicitly, whatever the process's umask (a common 022 would leave
them readable by every local user), and before anything is written to them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600


def private_directory(path: str | os.PathLike[str], *, tighten: bool = False) -> Path:
    """`path`, created if missing with each directory it creates 0700 (its missing parents
    too). An existing directory is left as it is, unless `tighten`: then its group and
    others lose every permission (for a directory that is this tool's own, such as the
    logs of a local run, so that one made by an older version becomes private too; never
    for one the operator chose, which may be shared on purpose)."""
    directory = Path(path)
    missing: list[Path] = []
    probe = directory
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for created in reversed(missing):
        try:
            # The umask can only take bits away from 0700: never wider, even for a moment.
            os.mkdir(created, PRIVATE_DIRECTORY)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, left as it is
        os.chmod(created, PRIVATE_DIRECTORY)  # an umask such as 0277 took owner bits
    if tighten and directory not in missing:
        _tighten(directory)
    return directory


def create_private_file(path: str | os.PathLike[str]) -> bool:
    """Create `path` empty and 0600 unless it exists; True if it was created. An existing
    file is left as it is (it may be shared on purpose)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return True


def open_private_log(path: str | os.PathLike[str]) -> IO[bytes]:
    """`path` opened to append bytes, created 0600 if missing, and made 0600 if it exists
    (a log file is this tool's own: one an older version left readable becomes private)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        return os.fdopen(fd, "ab")
    except BaseException:
        os.close(fd)
        raise


def _tighten(directory: Path) -> None:
    """Take every permission of group and others away from `directory`, if this user owns
    it (one that is someone else's is left as it is: chmod would fail anyway)."""
    with contextlib.suppress(OSError):
        status = directory.stat()
        if status.st_uid == os.getuid() and status.st_mode & 0o077:
            os.chmod(directory, status.st_mode & 0o700)
