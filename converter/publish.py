"""Build an artifact under budgets: written beside its target, moved into place only when every
budget holds, so a build never ships an over-budget file and the last good one stays."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.allocate import Goal, allocate
from converter.convert import convert
from converter.datasets import Inputs
from converter.gates import Budget
from converter.policy import Policy
from converter.sizes import size_report
from formats.atomic import prepare_parent, sweep_stale, track, untrack
from formats.errors import BudgetError, QpackError
from formats.model import SourceModel
from formats.qpk import Codec


@dataclass
class Published:
    report: dict[str, Any]
    broken: BudgetError | None  # the first broken budget; the target was then left as it was


def pending_path(target: Path) -> Path:
    """Where an artifact is staged: beside its target (same file system, so the move is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}.pending")


def publish(src: SourceModel, policy: Policy, target: Path, codec: Codec, budget: Budget, compressors: tuple[str, ...],
            progress: Callable[[int, int], None] | None = None, compress_progress: Callable[[str], None] | None = None,
            goal: Goal | None = None, inputs: Inputs | None = None, log: Callable[[str], None] | None = None) -> Published:
    """Convert `src` to `target` and return its size report; on a broken budget `target` is untouched.

    With a `goal`, the widths, groupings and clipping of each tensor are allocated first (see
    converter.allocate); a goal that cannot be met is a BudgetError before anything is written.
    """
    if target.resolve() == src.path.resolve():
        raise QpackError(f"{target}: output would overwrite the input")
    prepare_parent(target)  # before any work, and naming the path the user gave
    allocation = None
    if goal is not None and goal.any:
        with tempfile.TemporaryDirectory(prefix="qpack-allocate-") as tmp:
            policy, allocation = allocate(src, policy, goal, codec, tmp, src.path, inputs, log)
    pending = pending_path(target)
    sweep_stale(target)
    track(pending)
    try:
        try:
            result = convert(src, policy, pending, progress, codec)
        except QpackError as e:  # name the output the user asked for, not the staging file
            raise type(e)(str(e).replace(str(pending), str(target))) from e
        report = size_report(src, result, compressors, compress_progress)
        report["options"] = policy.options(codec.name)
        report["output"] = str(target)
        if allocation is not None:
            report["allocation"] = allocation
        sizes = report["sizes"]
        try:
            budget.check(sizes["qpk_bytes"], sizes["bits_per_weight"], sizes["sqnr_db"], floats_known=True)
        except BudgetError as e:
            return Published(report, e)
        os.replace(pending, target)
        return Published(report, None)
    finally:
        try:
            pending.unlink(missing_ok=True)
        except OSError:  # cleaning up must not hide the error that got us here
            pass
        untrack(pending)
