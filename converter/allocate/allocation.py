"""allocate(): the menus measured and weighed, the goal's search run on trial conversions, a summary for reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qpack.converter.allocate.goals import Goal, Task
from qpack.converter.allocate.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, OUTPUTS_OBJECTIVE, weigh
from qpack.converter.allocate.options import Menu, menus, weights_of
from qpack.converter.allocate.sensitivity import output_gains
from qpack.converter.export import QPK
from qpack.converter.policy import Policy
from qpack.formats.errors import BudgetError, OptionError
from qpack.formats.model import SourceModel


@dataclass
class Allocation:
    """What allocate() found: the policy, a summary for reports, the last trial conversion
    (`trial`, a ConvertResult whose file is in the work folder) when it is of that very policy and
    in the caller's codec, so the caller can use it instead of converting again, and the trials'
    quantization (`reuse`, a converter.convert.Reuse) for when it converts."""

    policy: Policy
    summary: dict[str, Any]
    trial: Any = None
    reuse: Any = None


def allocate(src: SourceModel, policy: Policy, goal: Goal, codec: Any, workdir: Any, model_path: Any = None,
             inputs: Any = None, log: Callable[[str], None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> Allocation:
    """The policy that meets `goal` (tensors fixed to their chosen settings), and a summary for reports.

    `policy.bits` is where a fidelity search starts; every option uses `policy.scheme`, or one of
    `goal.schemes`. The goal's search is the one its registry entry names (goals.GOALS).
    """
    from qpack.converter.convert import Reuse, convert
    from qpack.converter.deploy import priced
    from qpack.formats.qpk import RAW

    goal.check()
    if policy.bits_for:
        raise OptionError("--bits-for fixes widths by hand: leave it out when qpack allocates them")
    given = goal.given()
    if not given:
        raise OptionError("no goal given: nothing to allocate for")
    trial = Path(workdir) / "trial.qpk"
    narrowed = [spec.narrow(src, policy, v) for spec, v in given if spec.narrow is not None]
    ms = menus(src, policy, progress, codec=codec, schemes=goal.schemes, near=narrowed[0] if narrowed else None)
    if not ms:
        from qpack.converter.policy import ALREADY

        done = sum(len(w.shape) >= 2 and policy.decide(w).reason.startswith(ALREADY) for w in src.weights)
        why = (f" ({done} weight tensors are already quantized: convert the float model they came from)" if done else "")
        raise OptionError(f"no tensor is quantized under these options: nothing to allocate{why}")

    last: list[Any] = [None, None]  # the policy last converted, and its result
    reuse = Reuse()  # trials differ in a few tensors: the others are carried over
    # a fidelity goal's trials are judged by their decoded weights and priced by the menus: their codes
    # need not be entropy-coded (the final conversion codes them once); size goals price real streams
    trial_codec = RAW if goal.fidelity else codec

    def convert_to(p: Policy) -> Any:
        last[:] = [p, convert(src, p, trial, codec=trial_codec, reuse=reuse)]
        return last[1]

    objective = goal.weighing
    gains: dict[str, float] = {}
    if objective == OUTPUTS_OBJECTIVE:
        measured = output_gains(src, ms, Path(workdir), log)
        if measured is None:
            objective = DEFAULT_OBJECTIVE
        else:
            gains = {m.weight.key: g for m, g in zip(ms, measured)}

    def weighed(found: list[Menu]) -> list[Menu]:
        for m in found:
            m.importance = gains.get(m.weight.key, 1.0)
        return weigh(found, objective)

    def remeasure(widest: int, schemes: tuple[str, ...] | None = None) -> list[Menu]:
        return weighed(menus(src, policy, progress, codec=codec, schemes=schemes or goal.schemes, widest=widest))

    weighed(ms)
    summary: dict[str, Any] = {"proxy": OBJECTIVES[objective].help, "objective": objective,
                               "schemes": list(goal.schemes or (policy.scheme,))}
    task = Task(src, policy, goal, ms, convert_to, remeasure, trial, Path(workdir), model_path, inputs, log)
    if (target := priced(policy, trial_codec.name)) is not None:  # made for an export target: its bytes
        task.stored, task.size = target
    spec, value = given[0]  # size goals come alone, and fidelity goals share one search
    try:
        p, chosen, found = spec.search(task, value)
    except BudgetError as e:
        if policy.target == QPK:
            raise
        raise BudgetError(f"{e}, as --for {policy.target} stores them") from None
    summary["goal"] = " and ".join(f"{s.option} {v}" for s, v in given)
    summary.update(found)
    summary["candidates"] = sum(len(m.options) for m in ms)  # the menus searched (widened ones included)
    summary["bits_per_weight_planned"] = round(8 * sum(o.nbytes for o in chosen) / weights_of(ms), 4)
    if any(o.keep for o in chosen):
        summary["kept_in_float"] = [m.weight.name for m, o in zip(ms, chosen) if o.keep]
    return Allocation(p, summary, last[1] if last[0] is p and trial_codec.id == codec.id else None, reuse)
