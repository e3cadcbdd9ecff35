"""Opening input files: only regular files are read, and opening never blocks."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from qpack.formats.errors import FormatError


def open_regular(path: Path) -> BinaryIO:
    """A buffered reader over open_raw()."""
    return io.BufferedReader(open_raw(path))


def open_raw(path: Path) -> io.FileIO:
    """Open `path` for reading, refusing FIFOs, devices, sockets and directories.

    O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; the check on
    the opened descriptor (not the name) leaves no window for a swap between check and use.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror})") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise FormatError(f"{path}: is {kind}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return io.FileIO(fd, "r", closefd=True)
    except BaseException:
        os.close(fd)
        raise
