"""Build an artifact under budgets: written beside its target, moved into place only when every
budget holds, so a build never ships an over-budget file and the last good one stays."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qpack.converter.allocate import Allocation, Goal, allocate
from qpack.converter.convert import convert
from qpack.converter.datasets import Inputs
from qpack.converter.export import QPK, TARGETS, export, fit
from qpack.converter.gates import Budget
from qpack.converter.policy import Policy
from qpack.converter.sizes import size_report
from qpack.formats.atomic import prepare_parent, scratch_folder, sweep_stale, track, untrack
from qpack.formats.errors import BudgetError, OptionError, QpackError
from qpack.formats.model import SourceModel
from qpack.formats.qpk import Codec, QpkReader


@dataclass
class Published:
    report: dict[str, Any]
    broken: BudgetError | None  # the first broken budget; the target was then left as it was


def pending_path(target: Path) -> Path:
    """Where an artifact is staged: beside its target (same file system, so the move is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}.pending")


def _take(trial: Path, pending: Path) -> None:
    """Move a finished trial container into the staging path (copied where they are on different file systems)."""
    try:
        os.replace(trial, pending)
    except OSError:
        shutil.copyfile(trial, pending)


def made_for(qpk: Path, to: str, shown: Path, calibration: Any = None) -> dict[str, Any]:
    """The export a file made `--for` a target gets, written to a scratch folder before the file is put in
    place: it must store every tensor as the container does. Returns its measured bytes (a model file;
    firmware sources are text, so their flash stays the estimate) and notes. A target that calibrates
    on inputs is exported with `calibration` (export.calibrate.Calibration), without one not at all.

    Raises:
        QpackError: the target cannot run the file as made (a defect: --for allocates only what it runs).
    """
    t = TARGETS[to]
    with QpkReader(qpk) as q:
        if n := t.widened(q):
            raise QpackError(f"{shown}: made --for {to}, but {n} of its tensors are not stored as {to} runs them")
    if t.calibrated and calibration is None:  # nothing to calibrate on: its bytes stay the estimate
        return {}
    with scratch_folder("qpack-export-") as tmp:
        out = Path(tmp) / (shown.with_suffix("." + t.formats[0]).name if t.graph else "sources")
        try:
            files, notes = export(qpk, to, out, calibration if t.calibrated else None)
        except QpackError as e:
            raise type(e)(f"{shown}: made --for {to}, but its export fails: {e}") from e
        got: dict[str, Any] = {"notes": notes}
        if t.graph:
            got.update(bytes=sum(f.stat().st_size for f in files), measured=True)
        return got


def publish(src: SourceModel, policy: Policy, target: Path, codec: Codec, budget: Budget, compressors: tuple[str, ...],
            progress: Callable[[int, int], None] | None = None, compress_progress: Callable[[str], None] | None = None,
            goal: Goal | None = None, inputs: Inputs | None = None, log: Callable[[str], None] | None = None,
            calibration: Any = None) -> Published:
    """Convert `src` to `target` and return its size report; on a broken budget `target` is untouched.

    With a `goal`, the widths, groupings and clipping of each tensor are allocated first (see
    converter.allocate); a goal that cannot be met is a BudgetError before anything is written.
    """
    if target.resolve() == src.path.resolve():
        raise OptionError(f"{target}: output would overwrite the input")
    prepare_parent(target)  # before any work, and naming the path the user gave
    if goal is None or not goal.any:
        return _publish(src, policy, target, codec, budget, compressors, progress, compress_progress, None, calibration)
    with scratch_folder("qpack-allocate-") as tmp:  # trials; the last may be shipped from here
        found = allocate(src, policy, goal, codec, tmp, src.path, inputs, log, progress)
        return _publish(src, found.policy, target, codec, budget, compressors, progress, compress_progress, found, calibration)


def _publish(src: SourceModel, policy: Policy, target: Path, codec: Codec, budget: Budget, compressors: tuple[str, ...],
             progress: Callable[[int, int], None] | None, compress_progress: Callable[[str], None] | None,
             found: Allocation | None, calibration: Any = None) -> Published:
    allocation = found.summary if found else None
    pending = pending_path(target)
    sweep_stale(target)
    track(pending)
    try:
        try:
            if found and found.trial is not None:  # the allocation's last trial is this policy's container: same bytes
                _take(found.trial.path, pending)
                result = replace(found.trial, path=pending)
            else:
                result = convert(src, policy, pending, progress, codec, reuse=found.reuse if found else None)
        except QpackError as e:  # name the output the user asked for, not the staging file
            raise type(e)(str(e).replace(str(pending), str(target))) from e
        if found:
            found.reuse = None  # the trials' codes: not needed past here (the report's compressors run next)
        report = size_report(src, result, compressors, compress_progress)
        report["options"] = policy.options(codec.name)
        report["output"] = str(target)
        if allocation is not None:
            report["allocation"] = allocation
        with QpkReader(pending) as q:  # where the file can go: what each export target would widen, and its bytes
            report["exports"] = fit(q)
        if policy.target != QPK:
            report["exports"][policy.target].update(made_for(pending, policy.target, target, calibration))
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
