"""`export --measure`: what the export costs to run, against the float model, on this machine.

Users pick a quantized model to make inference cheaper, so the export can say whether it is: the
container's float model (`qpack unpack`) and the export load into the runtime as users run it
(onnxruntime with its default optimizations, LiteRT with its default delegate; one thread each) and
take turns on the same inputs, the order alternating each round so a change in the machine's load
between rounds falls on both. The ratio is the median over the rounds of the export's time over the
float model's in the same round, so it holds on a shared machine where absolute times do not.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from numpy.typing import NDArray

from qpack.converter.datasets import Inputs
from qpack.converter.export.calibrate import feeds
from qpack.converter.runtime import Runner, open_runner, random_inputs

BUDGET = 3.0  # seconds of timed rounds
ROUNDS = (10, 1000)  # at least, at most
WARMUP = 3


def _files_bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def _feeds(runner: Runner, given: dict[str, NDArray] | None) -> dict[str, NDArray]:
    """The given inputs where the runner takes those names, else deterministic stand-ins for its own."""
    if given is not None and {s.name for s in runner.inputs} <= set(given):
        return {s.name: given[s.name] for s in runner.inputs}
    return random_inputs(runner.inputs, seed=0)


def measure(qpk: Path, files: list[Path], runtime: str, load: Callable[[Path], Inputs] | None = None,
            budget: float = BUDGET) -> str:
    """One line: the export's median latency and its bytes as ratios to the float model's, with the rounds.
    `load` gives the inputs (their first sample is fed) from the float model; without it, stand-ins
    drawn from each model's input specs (latency seldom depends on the values)."""
    from qpack.converter.convert import restore

    with tempfile.TemporaryDirectory(prefix="qpack-measure-") as tmp:
        model = files[0]
        float_files = restore(qpk, Path(tmp) / f"float{model.suffix}")
        base, runner = open_runner(float_files[0], threads=1, deployed=True), open_runner(model, threads=1, deployed=True)
        inputs = load(float_files[0]) if load is not None else None
        given = next(feeds(inputs)) if inputs is not None and inputs.count else None
        a, b = _feeds(base, given), _feeds(runner, given)
        for _ in range(WARMUP):
            base.run(a)
            runner.run(b)
        ratios: list[float] = []
        start = time.perf_counter()
        turns = [(base, a), (runner, b)]
        while len(ratios) < ROUNDS[1] and (len(ratios) < ROUNDS[0] or time.perf_counter() - start < budget):
            spent = []
            for which, feed in turns if len(ratios) % 2 == 0 else turns[::-1]:  # the order alternates
                t = time.perf_counter()
                which.run(feed)
                spent.append(time.perf_counter() - t)
            took_float, took_export = spent if len(ratios) % 2 == 0 else spent[::-1]
            ratios.append(took_export / max(took_float, 1e-9))
        float_bytes = _files_bytes(float_files)
    ratio = statistics.median(ratios)
    size = _files_bytes(files)
    return (f"measured in {runtime} (one thread, {len(ratios)} interleaved rounds): {ratio:.2f}x the float model's latency, "
            f"{size / float_bytes:.3f}x its bytes ({size:,} of {float_bytes:,})")


__all__ = ["measure"]
