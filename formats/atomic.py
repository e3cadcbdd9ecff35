"""Write-then-rename, so a failed or stopped run never leaves a half-written output behind.

Temporary files are named `.NAME.PID.*.tmp` beside their target. The ones being written are
tracked, so a SIGTERM or SIGINT handler can remove them (remove_pending); a run that was killed
outright (SIGKILL) leaves one behind, which the next run writing beside it removes once its PID
is gone (sweep_stale).

The stop handler runs on the main thread between any two bytecodes, also in the middle of track()
or atomic_output() on that same thread. So nothing here takes a lock (a handler waiting on a lock its
own thread holds waits forever), and a file is tracked before it is created: a stop at any point finds
every file this run made.

A set of outputs that belong together (atomic_outputs: the sources of a firmware export) is written
whole to temporary files first, then renamed into place one by one. A stop among those renames
finishes them rather than removing anything, so the set's paths hold the old files or the new ones,
never some of each.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from qpack.formats.errors import QpackError

# Paths this run is writing. Setting and popping a dict key are single operations under the GIL, and
# list() of a dict copies it without running Python code, so the handler needs no lock to read it.
_live: dict[str, None] = {}
# Sets of outputs written whole and being renamed into place: (temporary, target) pairs, one item per
# set, so recording a set is one operation.
_committing: dict[int, tuple[tuple[str, str], ...]] = {}


def track(path: Path | str) -> None:
    """Remember a file or folder this run is writing, for remove_pending(); call it before creating it."""
    _live[os.fspath(path)] = None


def untrack(path: Path | str) -> None:
    _live.pop(os.fspath(path), None)


def remove_pending() -> None:
    """Finish putting in place the sets of outputs already written whole, then remove every file and
    folder this run is still writing (called on SIGTERM/SIGINT; takes no lock)."""
    for moves in list(_committing.values()):
        _finish(moves)
    _committing.clear()
    for p in list(_live):
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass
    _live.clear()


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
    """Check that `path` can be written as a regular file in a folder that exists, or say why not.

    A FIFO, a device or a socket at `path` is refused: replacing it with a file (or writing into a
    device as root) is never what a user asked for. A missing folder is an error, not created: a typo
    in a path should not grow a tree of folders.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass  # nothing there yet (the folder is checked next)
    except OSError as e:
        raise cannot_write(path, e) from e
    else:
        if stat.S_ISDIR(st.st_mode):
            raise QpackError(f"{path}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise QpackError(f"{path}: is not a regular file ({_kind(st.st_mode)}); qpack writes outputs as files")
    parent = path.parent
    if not parent.is_dir():
        blocking = next((p for p in path.parents if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise QpackError(f"{path}: cannot write ({blocking} is a file, not a folder)")
        raise QpackError(f"{path}: cannot write (the folder {parent} does not exist)")


def prepare_folder(folder: Path) -> None:
    """Make output folder `folder` (its own parent must exist), or say why it cannot be."""
    folder = Path(folder)
    if folder.is_dir():
        return
    if folder.exists() or folder.is_symlink():
        raise QpackError(f"{folder}: cannot write (it exists and is not a folder)")
    prepare_parent(folder)
    try:
        folder.mkdir()
    except FileExistsError:
        if not folder.is_dir():
            raise QpackError(f"{folder}: cannot write (it exists and is not a folder)") from None
    except OSError as e:
        raise cannot_write(folder, e) from e


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def _create_beside(path: Path) -> tuple[int, Path]:
    """Create and open a new temporary file beside `path`, tracked from before it exists."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        track(tmp)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            untrack(tmp)
        except OSError as e:
            untrack(tmp)
            raise cannot_write(path, e) from e
    raise QpackError(f"{path}: cannot write (no free temporary name beside it)")


@contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Yield a temporary file beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    prepare_parent(path)
    sweep_stale(path)
    fd, tmp = _create_beside(path)
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


def _finish(moves: tuple[tuple[str, str], ...]) -> None:
    """The renames of a set of outputs that are still to do (a temporary already renamed is gone)."""
    for tmp, target in moves:
        try:
            os.replace(tmp, target)
        except OSError:
            pass


class OutputSet:
    """The files of an atomic_outputs() set, each written through output()."""

    def __init__(self) -> None:
        self.temps: list[Path] = []
        self.moves: list[tuple[str, str]] = []

    @contextmanager
    def output(self, path: Path) -> Iterator[BinaryIO]:
        """Yield a temporary file beside `path`, put in place with the rest of the set."""
        path = Path(path)
        prepare_parent(path)
        sweep_stale(path)
        fd, tmp = _create_beside(path)
        self.temps.append(tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            os.chmod(tmp, 0o644)
        except OSError as e:
            raise cannot_write(path, e) from e
        self.moves.append((os.fspath(tmp), os.fspath(path)))


@contextmanager
def atomic_outputs(folder: Path) -> Iterator[OutputSet]:
    """A set of outputs in `folder` (made if missing; its parent must exist) that appear together or not at all.

    Each file goes to a temporary beside its target (OutputSet.output); when the block succeeds, the
    temporaries are renamed over their targets in the order they were written. A failure or a stop
    before that leaves every target as it was (and no folder made); a stop among the renames finishes
    them (remove_pending). No fsync, as in atomic_output; and SIGKILL runs no handler, so a run killed
    among the renames (microseconds) leaves the first of them done.
    """
    folder = Path(folder)
    made = not folder.exists() and not folder.is_symlink()
    if made:
        track(folder)  # before it exists: a stop from here removes it
    outputs = OutputSet()
    key = id(outputs)
    try:
        prepare_folder(folder)
        yield outputs
        moves = tuple(outputs.moves)
        _committing[key] = moves  # from here, a stop finishes the renames instead of undoing the set
        if made:
            untrack(folder)
        for staged, target in moves:
            try:
                os.replace(staged, target)
            except OSError as e:  # targets were checked to be files or nothing: a disk or permission failure
                raise cannot_write(Path(target), e) from e
    except BaseException as e:
        if key in _committing and not isinstance(e, QpackError):  # interrupted among the renames
            _finish(_committing[key])
        for tmp in outputs.temps:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if made and key not in _committing:
            try:
                os.rmdir(folder)
            except OSError:
                pass
        raise
    finally:
        _committing.pop(key, None)
        for tmp in outputs.temps:
            untrack(tmp)
        if made:
            untrack(folder)
        for tmp in outputs.temps:
            untrack(tmp)


@contextmanager
def scratch_folder(prefix: str) -> Iterator[str]:
    """A private temporary folder (trials, restored models), removed on exit and on a stop."""
    base = tempfile.gettempdir()
    for _ in range(100):
        folder = os.path.join(base, f"{prefix}{os.getpid()}.{secrets.token_hex(4)}")
        track(folder)
        try:
            os.mkdir(folder, 0o700)
            break
        except FileExistsError:
            untrack(folder)
        except OSError as e:
            untrack(folder)
            raise QpackError(f"{base}: cannot make a temporary folder ({e.strerror or e})") from e
    else:
        raise QpackError(f"{base}: cannot make a temporary folder (no free name)")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        untrack(folder)


def write_bytes_atomic(path: Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write `data` (bytes, or a function that writes to the file) atomically to `path`."""
    with atomic_output(path) as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
