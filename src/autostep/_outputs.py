"""Output paths checked before any work starts: files and folders that can be written.

The command-line tools call :func:`check_output_file` / :func:`check_output_dir` on ``--out`` before
they train anything, so a path that cannot be written costs a one-line message instead of a
traceback after minutes of work.  Writability is probed by actually creating (and removing) a file:
``os.access`` says yes to root even on a read-only mount.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["OutputPathError", "check_output_file", "check_output_dir"]


class OutputPathError(ValueError):
    """An output path that cannot be written (the message names it and says why)."""


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _first_existing(path: str) -> str:
    """The deepest existing ancestor of ``path`` (``path`` itself when it exists)."""
    head = os.path.abspath(path)
    while not os.path.exists(head):
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    return head


def check_output_file(path, what: str = "output file") -> str:
    """Make sure ``path`` can be written as a file (its folder is created if missing).

    Refuses an existing folder, a path under an existing file, and a location where a file cannot
    be created (read-only folder or file system).  An existing file is left untouched (it is opened
    for appending, nothing is written).  Returns the path.
    """
    path = os.fspath(path)
    if not path:
        raise OutputPathError(f"{what} is empty; give a file name")
    if os.path.isdir(path):
        raise OutputPathError(f"{what} {path!r} is a folder; give a file name, e.g. "
                              f"{os.path.join(path, 'plot.png')!r}")
    anchor = _first_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(anchor):
        raise OutputPathError(f"{what} {path!r} lies under {anchor!r}, which is a file, not a folder")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the folder of {what} {path!r}: {_why(exc)}") from None
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise OutputPathError(f"cannot write {what} {path!r}: {_why(exc)}") from None
    if not existed:
        os.remove(path)
    return path


def check_output_dir(path, what: str = "output folder") -> str:
    """Make sure ``path`` is (or can be created as) a folder where files can be written.

    Refuses an existing file, a path under a file and a read-only location; creates the folder
    when missing.  Returns the path.
    """
    path = os.fspath(path)
    if not path:
        raise OutputPathError(f"{what} is empty; give a folder name")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputPathError(f"{what} {path!r} is an existing file, not a folder; give a folder "
                              "name (it is created if missing)")
    anchor = _first_existing(path)
    if not os.path.isdir(anchor):
        raise OutputPathError(f"{what} {path!r} lies under {anchor!r}, which is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".autostep-write-test-", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise OutputPathError(f"cannot write into {what} {path!r}: {_why(exc)}") from None
    return path
