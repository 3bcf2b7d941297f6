"""What a path is, when it is not a regular file: inputs the harness reads must be files.

Strategy: one `os.stat` and the `stat` module's tests, named as a user would say them.
Opening a named pipe with no writer blocks forever and a device may never end, so readers
of scenario files and streams ask `not_a_file` first and refuse with its words.
"""

from __future__ import annotations

import os
import stat

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
          (stat.S_ISSOCK, "a socket"))


def not_a_file(path: str | os.PathLike[str]) -> str | None:
    """None for a regular file (links followed), else what it is ("a directory", ...).
    Raises OSError (FileNotFoundError...) when it cannot be looked at."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")
