"""Write-then-rename, so a failed or stopped run never leaves a half-written output behind.

Temporary files are named `.NAME.PID.*.tmp` beside their target. The ones being written are
tracked, so a SIGTERM or SIGINT handler can remove them (remove_pending); a run that was killed
outright (SIGKILL) leaves one behind, which the next run writing beside it removes once its PID
is gone (sweep_stale).
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from qpack.formats.errors import QpackError

_live: set[Path] = set()
_lock = threading.Lock()


def track(path: Path) -> None:
    """Remember a file this run is writing, for remove_pending()."""
    with _lock:
        _live.add(Path(path))


def untrack(path: Path) -> None:
    with _lock:
        _live.discard(Path(path))


def remove_pending() -> None:
    """Remove every file this run is still writing (called on SIGTERM/SIGINT)."""
    with _lock:
        paths = list(_live)
        _live.clear()
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def sweep_stale(path: Path) -> None:
    """Remove leftovers of qpack runs that died while writing `path`: `.NAME.PID.*` whose PID is gone."""
    # one more leading dot: the temporary file of a staged (`.NAME.PID.pending`) output
    pattern = re.compile(r"\.\.?" + re.escape(path.name) + r"\.(\d+)\.(?:pending|[A-Za-z0-9_]+\.tmp)(?:\..*)?")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m and not _alive(int(m.group(1))):
            try:
                os.unlink(path.parent / name)
            except OSError:
                pass


def cannot_write(path: Path, e: OSError) -> QpackError:
    """The error for a failed write to `path`, the name the user gave (not a temporary file's)."""
    return QpackError(f"{path}: cannot write ({e.strerror or e})")


def prepare_parent(path: Path) -> None:
    """Make the folder `path` goes in, or say why it cannot be (a file where a folder should be)."""
    path = Path(path)
    if path.is_dir():
        raise QpackError(f"{path}: is a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise QpackError(f"{path}: cannot write ({parent} is a file, not a folder)")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(path, e) from e


@contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Yield a temporary file beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    prepare_parent(path)
    try:
        sweep_stale(path)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise cannot_write(path, e) from e
    tmp = Path(name)
    track(tmp)
    try:
        try:
            # No fsync: the rename makes the output all-or-nothing for a failed, stopped or killed
            # run; surviving a power cut as well would cost a full flush to disk on every write,
            # which compilers and model savers do not pay either.
            with os.fdopen(fd, "wb") as f:
                yield f
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as e:
            raise cannot_write(path, e) from e
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    finally:
        untrack(tmp)


def write_bytes_atomic(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write `data` (bytes, or a function that writes to the file) atomically to `path`."""
    with atomic_output(path) as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
