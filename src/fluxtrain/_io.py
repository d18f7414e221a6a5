"""Atomic file writing, shared by checkpoints, optimiser-state files and ``fluxtrain fit``."""
from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, flush it to disk, then
    rename it over ``path`` with ``os.replace``.

    A reader sees the old file or the complete new one, never a half-written one. If
    ``write`` (or anything after it) raises, the temporary file is removed, ``path`` is left
    as it was, and the exception propagates. The folder must exist.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> atomic_write(p, lambda f: f.write(b"hi"))
    >>> open(p, "rb").read()
    b'hi'
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # same folder as the target: os.replace is only atomic within one file system
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
