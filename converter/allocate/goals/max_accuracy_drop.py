"""--max-accuracy-drop: at most so many points of accuracy lost on labelled inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qpack.converter.allocate.goals import fidelity
from qpack.converter.allocate.goals.registry import GoalSpec, Kind
from qpack.converter.allocate.objectives import FIDELITY_OBJECTIVE
from qpack.formats.errors import OptionError

if TYPE_CHECKING:
    from qpack.converter.allocate.goals import Goal


def _met(goal: Goal, points: float, result: dict[str, Any]) -> tuple[bool, str]:
    c = result.get("classification") or {}
    if "accuracy_original" not in c:
        raise OptionError("--max-accuracy-drop needs a classifier and labelled inputs")
    drop = 100 * (c["accuracy_original"] - c["accuracy_quantized"])
    return drop <= points, f"accuracy drop {drop:.2f} points"


def _check(points: float) -> None:
    if points < 0:
        raise OptionError("--max-accuracy-drop must not be negative")


GOAL = GoalSpec("--max-accuracy-drop", "max_accuracy_drop", float,
                "accuracy lost on labelled inputs at most this many points",
                Kind.FIDELITY, FIDELITY_OBJECTIVE, fidelity.search, _check, fixed_objective="a fidelity goal is measured",
                met=_met, metavar="POINTS")
