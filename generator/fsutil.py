"""Atomic file writes (a reader sees the old file or the new one, never a half), locks,
and the check of a folder the user names before vgen writes in it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

from .errors import VgenError


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Write text to path through a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        elif path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on `path` (created when missing) while the block runs, so
    two vgen processes never write the same registry or app at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_folder(path: Path, option: str) -> None:
    """Raise VgenError unless path is a folder vgen can write in, or can become one.

    Checked before any work starts, so that a folder the user names (--out, --root) that
    lies under a plain file, or where vgen may not write, is one clear error naming it
    instead of an OSError from half-way through.
    """
    path = Path(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise VgenError(f"{option} {path} is not a folder{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing})"
        raise VgenError(f"{option} {path}: permission denied{where}")
