"""Automatic bit allocation: the user states a goal, qpack picks each tensor's width, grouping and scheme.

Each quantized tensor gets a menu of measured settings (options, sample; on large models in worker
processes, pool), weighed by an objective (objectives); the goal (goals, a registry: --target-bpw,
--target-size, --target-sqnr, --min-cosine, --max-accuracy-drop) runs its search, which picks one
option per tensor with a knapsack (knapsack) and checks it on trial conversions (allocation).
"""

from qpack.converter.allocate.allocation import Allocation, allocate
from qpack.converter.allocate.goals import GOALS, Goal, GoalSpec, Kind, Task, register_goal
from qpack.converter.allocate.goals.fidelity import (
    COSINE_MARGIN,
    FEW_INPUTS,
    RESCUE_BITS,
    for_fidelity,
    goal_subsets,
    least_cosine,
)
from qpack.converter.allocate.goals.floor import FLOAT_FLOOR, float_floor
from qpack.converter.allocate.goals.target_bpw import for_bpw
from qpack.converter.allocate.goals.target_size import for_size
from qpack.converter.allocate.goals.target_sqnr import MAX_SQNR_DB, for_sqnr, step_widths
from qpack.converter.allocate.knapsack import choose, within_error
from qpack.converter.allocate.objectives import DEFAULT_OBJECTIVE, FIDELITY_OBJECTIVE, FLOOR_DB, OBJECTIVES, Objective
from qpack.converter.allocate.options import AUTO_SCHEMES, MAX_BITS, WIDE_BITS, Menu, Option, menu, menus, plan

__all__ = [
    "AUTO_SCHEMES", "COSINE_MARGIN", "DEFAULT_OBJECTIVE", "FEW_INPUTS", "FIDELITY_OBJECTIVE", "FLOAT_FLOOR", "FLOOR_DB", "GOALS",
    "MAX_BITS", "MAX_SQNR_DB", "OBJECTIVES", "RESCUE_BITS", "WIDE_BITS", "Allocation", "Goal", "GoalSpec", "Kind", "Menu", "Objective",
    "Option", "Task", "allocate", "choose", "float_floor", "for_bpw", "for_fidelity", "for_size", "for_sqnr", "goal_subsets",
    "least_cosine", "menu", "menus", "plan", "register_goal", "step_widths", "within_error",
]
