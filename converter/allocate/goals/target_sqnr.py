"""--target-sqnr: the fewest bytes whose pooled weight SQNR is at least so many dB.

The dual of the size goals: the knapsack's limit is the summed squared error (allocate.knapsack,
within_error), and what it finds is checked on real conversions. No tensor's own SQNR falls more
than FLOOR_DB below the goal (objectives.floored: a pooled error starves small tensors).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from qpack.converter.allocate.goals.registry import Found, GoalSpec, Kind, Task, stored_bytes
from qpack.converter.allocate.knapsack import within_error
from qpack.converter.allocate.objectives import POOLED_OBJECTIVE, floored
from qpack.converter.allocate.options import Menu, Option, plan
from qpack.converter.policy import Policy
from qpack.converter.quant.stream import check_finite
from qpack.formats.errors import BudgetError, OptionError
from qpack.formats.model import SourceModel

MAX_SQNR_DB = 100.0  # beyond what 8-bit codes give any real tensor: the goal is a typo


def for_sqnr(policy: Policy, db: float, convert_to: Callable[[Policy], Any], ms: list[Menu],
             stored: Callable[[Any], int] = stored_bytes) -> tuple[Policy, list[Option]]:
    """The fewest stored bytes whose pooled weight SQNR is at least `db` and no tensor's own more
    than FLOOR_DB below it (where its most precise option can), checked on real conversions: the
    estimated error budget is corrected by what each one missed by.

    Raises:
        BudgetError: even every tensor at its most precise setting falls short.
    """
    ms = floored(ms, db)
    signal = sum(m.signal for m in ms)
    allowed = target = signal / 10 ** (db / 10)
    best: tuple[Policy, list[Option]] | None = None
    best_bytes = math.inf
    tried: set[tuple[Option, ...]] = set()
    for _ in range(6):
        chosen = within_error(ms, target)
        if tuple(chosen) in tried:
            break
        tried.add(tuple(chosen))
        p = plan(policy, ms, chosen, f"fewest bytes at a pooled weight SQNR of {db:g} dB")
        result = convert_to(p)
        noise = sum(t.noise for t in result.tensors)
        got = 10 * math.log10(signal / noise) if noise > 0 else math.inf
        if got >= db and stored(result) < best_bytes:
            best, best_bytes = (p, chosen), stored(result)
        if got < db and all(o is m.options[-1] for o, m in zip(chosen, ms)):
            raise BudgetError(f"--target-sqnr {db:g} dB is out of reach: every tensor at its most precise setting "
                              f"gives {got:.2f} dB")
        if noise <= 0 or (best is not None and got - db < 0.05):
            break
        # the estimated errors were off by this factor: aim that much closer
        target = allowed * sum(o.error for o in chosen) / noise
    if best is None:
        raise BudgetError(f"could not reach --target-sqnr {db:g} dB")
    return best


def step_widths(model: SourceModel, policy: Policy, db: float) -> dict[str, int]:
    """Each quantized weight's sym width at the one step that gives the whole model a pooled weight
    SQNR of `db` (rounding noise step^2 / 12 a weight): equal slope lands near it, every width the
    recognizer's allocations chose lay within 3 below it, so a --target-sqnr menu need not measure
    the widths far from it."""
    chosen = [w for w in model.weights if policy.decide(w).quantize]
    tops, signal, count = {}, 0.0, 0
    for w in chosen:
        x = np.asarray(w.array, dtype=np.float32)
        check_finite(x, w.name)
        tops[w.key] = float(np.abs(x).max()) if x.size else 0.0
        signal += float(np.square(x, dtype=np.float64).sum())
        count += x.size
    if signal <= 0 or count == 0:
        return {}
    step = math.sqrt(12 * signal / count / 10 ** (db / 10))
    return {k: max(1, math.ceil(math.log2(2 * math.ceil(top / step) + 1))) for k, top in tops.items()}


def _search(task: Task, db: float) -> Found:
    return (*for_sqnr(task.policy, db, task.convert_to, task.menus, task.stored), {})


def _check(db: float) -> None:
    if not 0 < db <= MAX_SQNR_DB:
        raise OptionError(f"--target-sqnr must lie in (0, {MAX_SQNR_DB:g}] dB, not {db}")


GOAL = GoalSpec("--target-sqnr", "target_sqnr", float,
                "the smallest file whose weight SQNR, pooled over the quantized tensors, is at least this many dB",
                Kind.SIZE, POOLED_OBJECTIVE, _search, _check, fixed_objective="--target-sqnr is pooled by definition",
                narrow=step_widths, metavar="DB")
