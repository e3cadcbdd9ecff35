"""Work on each weight of a model, spread over forked worker processes, or threads where forking is not safe.

Menus are hundreds of small measurements, whose Python between numpy calls holds the GIL: on
models of PROCESS_WEIGHTS or more they run in forked worker processes (threads gained nothing on
the recognizer, processes 1.6x on two cores), each sent one tensor's values at a time. Only where
forking is safe: on Linux, from a process with no other Python thread running (a library caller
may hold locks in threads of its own; native pools such as BLAS's are not seen); else, or if a
worker dies or cannot be started, in threads (the same results).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from qpack.formats.model import Weight

R = TypeVar("R")

PROCESS_WEIGHTS = 1 << 18  # from this many weights, the work runs in worker processes
IN_FLIGHT_BYTES = 256 << 20  # tensors' values sent ahead to worker processes, at most (and at least one per worker)
PR_SET_PDEATHSIG = 1  # prctl: the signal a process gets when its parent ends

_LINUX = sys.platform.startswith("linux")
_FORK = multiprocessing.get_context("fork") if _LINUX else None


def each_weight(weights: list[Weight], job: Callable[[Weight], Callable[[], R]],
                progress: Callable[[int, int], None] | None = None, before_fork: Callable[[], None] | None = None) -> list[R]:
    """job(w)() for each weight, in order; `before_fork` prepares, once, what every worker process
    would otherwise prepare again (a compiled kernel)."""
    from concurrent.futures import BrokenExecutor, ProcessPoolExecutor, ThreadPoolExecutor

    from qpack.converter.convert import default_workers

    workers = default_workers()
    if workers > 1 and sum(w.size for w in weights) >= PROCESS_WEIGHTS and _fork_safe():
        if before_fork:
            before_fork()
        largest = max(w.size * 4 for w in weights)
        ahead = max(workers + 1, min(4 * workers, IN_FLIGHT_BYTES // largest))
        pool = ProcessPoolExecutor(workers, mp_context=_FORK, initializer=_worker_start, initargs=(os.getpid(),))
        try:
            return _gather(pool, (job(_portable(w)) for w in weights), ahead, len(weights), progress)
        except (BrokenExecutor, OSError):  # a worker died (out of memory?) or could not be forked: threads
            pass
        finally:
            pool.shutdown(cancel_futures=True)
    with ThreadPoolExecutor(workers) as threads:
        return _gather(threads, (job(w) for w in weights), workers + 1, len(weights), progress)


def _gather(pool: Any, jobs: Iterable[Callable[[], R]], ahead: int, total: int,
            progress: Callable[[int, int], None] | None) -> list[R]:
    from qpack.converter.convert import in_order

    out = []
    for i, got in enumerate(in_order(pool, jobs, ahead)):
        out.append(got)
        if progress:
            progress(i + 1, total)
    return out


def _fork_safe() -> bool:
    return _LINUX and threading.active_count() == 1


def _worker_start(parent: int) -> None:
    """A worker: Ctrl-C is for the parent (which stops with one line), and the worker ends with its
    parent, however that ends (a killed parent would otherwise leave it waiting forever)."""
    import ctypes
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - Linux has it
        pass
    if os.getppid() != parent:  # the parent ended before the signal was asked for
        os._exit(1)


def _portable(w: Weight) -> Weight:
    """The weight with its values in hand, to send to a worker process (its loader reads the model's file)."""
    return replace(w, load=partial(_held, np.asarray(w.array)))


def _held(x: NDArray) -> NDArray:
    return x
