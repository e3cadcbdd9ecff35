"""--target-bpw: the least weighted error within a number of stored bits per quantized weight.

The menus' bytes are a budget for the knapsack (allocate.knapsack, the least summed cost); with an
entropy-coding codec they are estimates, so the budget is corrected on real conversions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from qpack.converter.allocate.goals.registry import Found, GoalSpec, Kind, Task, stored_bytes
from qpack.converter.allocate.knapsack import choose
from qpack.converter.allocate.objectives import DEFAULT_OBJECTIVE, chooser
from qpack.converter.allocate.options import Menu, Option, bpw_budget, largest, plan
from qpack.converter.policy import Policy
from qpack.formats.errors import BudgetError, OptionError


def for_bpw(policy: Policy, bpw: float, convert_to: Callable[[Policy], Any], ms: list[Menu],
            stored: Callable[[Any], int] = stored_bytes,
            pick: Callable[[list[Menu], float], list[Option]] = choose) -> tuple[Policy, list[Option]]:
    """The allocation whose stored codes and parameters are at most `bpw` bits per quantized weight,
    checked on real conversions (entropy-coded sizes are estimates until then): the budget is
    scaled by what each conversion missed by, within the bracket of budgets known to fit and not
    to fit (an additive correction swung across the limit where the estimates are far off, as for
    zstd on codes that are not whole bytes), and the largest that fits is kept. `pick`: one option
    per menu within a budget (the objective's, objectives.chooser)."""
    limit = bpw_budget(ms, bpw)
    floor, top = float(sum(m.options[0].nbytes for m in ms)), largest(ms)
    budget, best, fits = limit, None, None
    fit_at, miss_at = floor, math.inf  # budgets whose allocations are known to fit, and not to
    stored_of: dict[tuple[Option, ...], int] = {}  # each allocation converted once
    for _ in range(12):
        chosen = pick(ms, budget)
        repeat = tuple(chosen) in stored_of
        if not repeat:
            p = plan(policy, ms, chosen, f"equal slope within {bpw} bits per weight")
            stored_of[tuple(chosen)] = got = stored(convert_to(p))
            if got <= limit and (fits is None or got > fits):
                best, fits = (p, chosen), got
        got = stored_of[tuple(chosen)]
        if got <= limit:
            fit_at = max(fit_at, budget)
        else:
            miss_at = min(miss_at, budget)
        if fits is not None and fits >= limit * (1 - 0.002):
            break
        nxt = min(budget * limit / max(got, 1), top + limit)
        if repeat or not fit_at < nxt < miss_at or abs(nxt - budget) < 1:  # the estimate is spent: bisect
            nxt = (fit_at + miss_at) / 2 if math.isfinite(miss_at) else 2 * budget
        if miss_at - fit_at < limit * 1e-3 or nxt < floor:
            break
        budget = nxt
    if best is None:
        raise BudgetError(f"could not fit the codes within --target-bpw {bpw}")
    return best


def _search(task: Task, bpw: float) -> Found:
    return (*for_bpw(task.policy, bpw, task.convert_to, task.menus, task.stored, chooser(task.goal.weighing)), {})


def _check(bpw: float) -> None:
    if not 0 < bpw <= 64:
        raise OptionError(f"--target-bpw must lie in (0, 64], not {bpw}")


GOAL = GoalSpec("--target-bpw", "target_bpw", float,
                "at most this many stored bits per weight (scales included)", Kind.SIZE, DEFAULT_OBJECTIVE, _search, _check,
                metavar="BITS")
