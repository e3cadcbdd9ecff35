"""Stops at every point: a child process runs some work and qpack's stop handler just before a
chosen line of the modules traced (where the interpreter may run a signal handler), so a test can
stop the work at each of its lines in turn and check what is left."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any


def stopped_at(point: int, traced: Iterable[str], work: Callable[[], object], timeout: float) -> int:
    """Fork a child that runs `work()` and calls the CLI's SIGTERM handler before its `point`-th line in
    the files `traced`; the child's exit status (143 when stopped, 0 when the work finished first),
    or -1 if it is still running after `timeout` seconds (a hang)."""
    from qpack.converter import cli

    files = set(traced)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            seen = 0

            def lines(frame: Any, event: str, arg: Any) -> Any:
                nonlocal seen
                if event == "line":
                    if seen == point:
                        cli._stop(signal.SIGTERM, None)
                    seen += 1
                return lines

            def calls(frame: Any, event: str, arg: Any) -> Any:
                return lines if frame.f_code.co_filename in files else None

            sys.settrace(calls)
            work()
            sys.settrace(None)
            os._exit(0)
        finally:
            os._exit(99)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1
