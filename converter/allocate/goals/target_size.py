"""--target-size: the least weighted error within a whole container of so many bytes."""

from __future__ import annotations

from collections.abc import Callable

from qpack.converter.allocate.goals.registry import Found, GoalSpec, Kind, Task
from qpack.converter.allocate.knapsack import choose
from qpack.converter.allocate.objectives import DEFAULT_OBJECTIVE, chooser
from qpack.converter.allocate.options import Menu, Option, plan
from qpack.converter.policy import Policy
from qpack.formats.errors import BudgetError, OptionError


def for_size(policy: Policy, size: int, convert_to: Callable[[Policy], int], ms: list[Menu],
             pick: Callable[[list[Menu], float], list[Option]] = choose) -> tuple[Policy, list[Option]]:
    """The allocation whose whole container is at most `size` bytes: the overhead (graph, metadata,
    padding) is measured on a first conversion and the budget corrected until the file fits.
    `pick`: one option per menu within a budget (the objective's, objectives.chooser)."""
    cheapest_policy = plan(policy, ms, [m.options[0] for m in ms], "cheapest")
    floor = convert_to(cheapest_policy)
    overhead = floor - sum(m.options[0].nbytes for m in ms)
    if floor > size:
        raise BudgetError(f"--target-size {size:,} bytes is below the smallest container these tensors make "
                          f"({floor:,} bytes, of which {overhead:,} graph and metadata)")
    budget = float(size - overhead)
    for _ in range(6):
        chosen = pick(ms, budget)
        p = plan(policy, ms, chosen, f"equal slope within {size:,} bytes")
        got = convert_to(p)
        if got <= size:
            return p, chosen
        budget -= got - size  # padding and metadata grew with the choice: take it off and try again
    raise BudgetError(f"could not fit the container within --target-size {size:,} bytes")


def _search(task: Task, size: int) -> Found:
    return (*for_size(task.policy, size, lambda q: task.size(task.convert_to(q)), task.menus, chooser(task.goal.weighing)), {})


def _check(size: int) -> None:
    if size <= 0:
        raise OptionError(f"--target-size must be a positive number of bytes, not {size}")


GOAL = GoalSpec("--target-size", "target_size", int, "a .qpk of at most this many bytes", Kind.SIZE,
                DEFAULT_OBJECTIVE, _search, _check, metavar="BYTES")
