"""The goal registry: what each goal declares (its option, field, checks, objective and search),
and what its search is given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qpack.converter.allocate.options import Menu, Option
from qpack.converter.policy import Policy
from qpack.formats.model import SourceModel

if TYPE_CHECKING:
    from qpack.converter.allocate.goals import Goal


class Kind(Enum):
    SIZE = "size"  # the goal fixes a size or a precision: one, alone, met by the menus' estimates and trial conversions
    FIDELITY = "fidelity"  # checked on the model's outputs in the runtime: any of them together, one search for all


@dataclass
class Task:
    """What a goal's search works with: the menus (weighed), and trial conversions in the work folder."""

    src: SourceModel
    policy: Policy
    goal: Goal
    menus: list[Menu]
    convert_to: Callable[[Policy], Any]  # a trial conversion of a policy to `trial`: its ConvertResult
    # the menus measured again up to this width (and for these schemes, else the goal's), weighed
    remeasure: Callable[..., list[Menu]]
    trial: Path
    workdir: Path
    model_path: Any = None
    inputs: Any = None  # converter.datasets.Inputs, for fidelity goals
    log: Callable[[str], None] | None = None
    # a trial's stored code and parameter bytes, and its whole size: the container's, or the export's
    # when the file is made for a target (deploy.priced)
    stored: Callable[[Any], int] = field(default=lambda r: stored_bytes(r))
    size: Callable[[Any], int] = field(default=lambda r: r.size)


# the policy found, its options (one per menu), and what the allocation summary adds
Found = tuple[Policy, list[Option], dict[str, Any]]


def _no_check(value: Any) -> None:
    pass


@dataclass(frozen=True)
class GoalSpec:
    """One goal the allocator meets.

    `check` raises OptionError for a value out of range; `search` finds the allocation (a fidelity
    goal's search serves every fidelity goal given with it); `fixed_objective`, where --objective
    does not apply to the goal, says why; `narrow`: each tensor's width a menu need only be measured
    around (menus' `near`); `met`: whether an evaluation meets a fidelity goal, and its figures in
    words; `parts`: a fidelity goal checked on subsets of the inputs too (fidelity.goal_subsets).
    """

    option: str  # "--target-bpw"
    field: str  # "target_bpw": Goal's field, or its key in Goal.others
    type: type  # of the value: float or int
    help: str
    kind: Kind
    objective: str  # what tensors are weighed by unless --objective says (a key of OBJECTIVES)
    search: Callable[[Task, Any], Found]
    check: Callable[[Any], None] = _no_check
    fixed_objective: str | None = None
    narrow: Callable[[SourceModel, Policy, Any], dict[str, int]] | None = None
    met: Callable[[Goal, Any, dict[str, Any]], tuple[bool, str]] | None = None
    parts: bool = False
    metavar: str = "VALUE"  # what the option's value is, in the CLI's help


GOALS: dict[str, GoalSpec] = {}


def register_goal(spec: GoalSpec) -> GoalSpec:
    """Add a goal under its field name; the order of registration is the order goals are listed and checked in."""
    if spec.field in GOALS and GOALS[spec.field] is not spec:
        raise ValueError(f"goal {spec.field!r} is already registered")
    GOALS[spec.field] = spec
    return spec


def stored_bytes(result: Any) -> int:
    """Code and parameter bytes a conversion (converter.convert.ConvertResult) stores."""
    return sum(t.stored_bytes + t.param_bytes for t in result.tensors)
