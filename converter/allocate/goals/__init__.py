"""What the user asks of an allocation: Goal, and the registry of goals it reads (GOALS).

A goal is one module declaring a GoalSpec, and one registry line below.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from qpack.converter.allocate.goals.registry import GOALS, Found, GoalSpec, Kind, Task, register_goal
from qpack.converter.allocate.objectives import DEFAULT_OBJECTIVE, OBJECTIVES
from qpack.converter.quant import get_quantizer
from qpack.formats.errors import OptionError


@dataclass(frozen=True)
class Goal:
    """What the user asked for; exactly one size goal, or fidelity goals checked on inputs. Goals
    registered beyond the fields below are given in `others` (see of)."""

    target_bpw: float | None = None
    target_size: int | None = None
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None  # points
    target_sqnr: float | None = None  # dB, pooled over the quantized weights
    objective: str | None = None  # a key of OBJECTIVES; None: see weighing
    schemes: tuple[str, ...] | None = None  # each tensor's scheme chosen among these; None: the policy's
    allow_float: bool = False  # a fidelity goal the most precise codes cannot meet may keep tensors in float
    # the share of the error a cosine goal allows (1 - min_cosine) that its search may spend on the
    # inputs it is tuned on; the rest is for other inputs (see goals.fidelity.COSINE_MARGIN)
    cosine_share: float = 1.0
    others: tuple[tuple[str, Any], ...] = ()  # (field, value) of registered goals that are not fields of Goal

    @classmethod
    def of(cls, **values: Any) -> Goal:
        """A goal from keywords: Goal's fields, and any registered goal by its field name."""
        own = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in own},
                   others=tuple((k, v) for k, v in values.items() if k not in own))

    def value(self, field: str) -> Any:
        """The value given for the goal of this field, or None."""
        return getattr(self, field) if field in self.__dataclass_fields__ else dict(self.others).get(field)

    def given(self) -> list[tuple[GoalSpec, Any]]:
        """The registered goals given a value, with it, in the registry's order."""
        return [(spec, v) for spec in GOALS.values() if (v := self.value(spec.field)) is not None]

    @property
    def cosine_floor(self) -> float:
        """The least cosine accepted on the inputs: min_cosine raised by the margin kept for other inputs."""
        if self.min_cosine is None:
            return -1.0  # every cosine
        return self.min_cosine + (1 - self.cosine_share) * (1 - self.min_cosine)

    @property
    def fidelity(self) -> bool:
        return any(spec.kind is Kind.FIDELITY for spec, _ in self.given())

    @property
    def any(self) -> bool:
        return bool(self.given())

    @property
    def weighing(self) -> str:
        """The objective's name: as given, else the goal's own (a size goal's, the fidelity goals'),
        else DEFAULT_OBJECTIVE."""
        if self.objective:
            return self.objective
        given = self.given()
        return given[0][0].objective if given else DEFAULT_OBJECTIVE

    def check(self) -> None:
        for k, _ in self.others:
            if k not in GOALS:
                raise OptionError(f"unknown goal {k!r}, expected one of {', '.join(GOALS)}")
        given = self.given()
        sizes = [spec.option for spec, _ in given if spec.kind is Kind.SIZE]
        if len(sizes) > 1:
            raise OptionError(f"give one of {_listed(_options(Kind.SIZE), 'and')}, not {' and '.join(sizes)}")
        if self.fidelity and sizes:
            raise OptionError(f"a fidelity goal ({', '.join(_options(Kind.FIDELITY))}) finds its own size: drop {sizes[0]}")
        for scheme in self.schemes or ():
            get_quantizer(scheme)  # an unknown name is an OptionError
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise OptionError(f"--objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if self.objective is not None and (not given or any(spec.fixed_objective for spec, _ in given)):
            weighed = [g.option for g in GOALS.values() if g.fixed_objective is None]
            fixed = dict.fromkeys(g.fixed_objective for g in GOALS.values() if g.fixed_objective is not None)
            raise OptionError(f"--objective weighs tensors for {_listed(weighed, 'or')} ({'; '.join(fixed)})")
        for spec, v in given:
            spec.check(v)
        if self.allow_float and not self.fidelity:
            raise OptionError(f"--allow-float is for fidelity goals ({', '.join(_options(Kind.FIDELITY))})")

    def met(self, result: dict[str, Any]) -> tuple[bool, str]:
        """Whether an evaluation (converter.evaluate) meets the fidelity goals, and the figures, in words."""
        words, ok = [], True
        for spec, v in self.given():
            if spec.met is not None:
                got, said = spec.met(self, v, result)
                ok &= got
                words.append(said)
        return ok, ", ".join(words)


def _options(kind: Kind) -> list[str]:
    return [g.option for g in GOALS.values() if g.kind is kind]


def _listed(items: list[str], last: str) -> str:
    """'a, b and c' (or 'a or b')."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


from qpack.converter.allocate.goals import (  # noqa: E402  (each registers against the names above)
    max_accuracy_drop,
    min_cosine,
    target_bpw,
    target_size,
    target_sqnr,
)

register_goal(target_bpw.GOAL)
register_goal(target_size.GOAL)
register_goal(target_sqnr.GOAL)
register_goal(min_cosine.GOAL)
register_goal(max_accuracy_drop.GOAL)

__all__ = ["GOALS", "Found", "Goal", "GoalSpec", "Kind", "Task", "register_goal"]
