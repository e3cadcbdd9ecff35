"""--min-cosine: every output's cosine to the float model's at least so much, on the given inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qpack.converter.allocate.goals import fidelity
from qpack.converter.allocate.goals.registry import GoalSpec, Kind
from qpack.converter.allocate.objectives import FIDELITY_OBJECTIVE
from qpack.formats.errors import OptionError

if TYPE_CHECKING:
    from qpack.converter.allocate.goals import Goal


def _met(goal: Goal, cosine: float, result: dict[str, Any]) -> tuple[bool, str]:
    """The least cosine over the outputs, over each single input and over the subsets of the inputs,
    against the goal raised by its margin (Goal.cosine_floor)."""
    cos = min(o["cosine"] for o in result["outputs"])
    worst = [o["worst_input_cosine"] for o in result["outputs"] if "worst_input_cosine" in o]
    parts = [min(o["cosine"] for o in p["outputs"]) for p in result.get("parts", [])]
    ok = min([cos, *worst, *parts]) >= goal.cosine_floor
    return ok, (f"min output cosine {cos:.5f}" + (f", worst single input {min(worst):.5f}" if worst else "")
                + (f" (parts {', '.join(f'{h:.5f}' for h in parts)})" if parts else ""))


def _check(cosine: float) -> None:
    if not -1 <= cosine <= 1:
        raise OptionError(f"--min-cosine must lie in [-1, 1], not {cosine}")


GOAL = GoalSpec("--min-cosine", "min_cosine", float,
                "every output's cosine to the float model's at least C, on the given inputs (the smallest file that keeps it)",
                Kind.FIDELITY, FIDELITY_OBJECTIVE, fidelity.search, _check, fixed_objective="a fidelity goal is measured",
                met=_met, parts=True, metavar="C")
