"""How an allocation weighs each tensor's error: the objectives `--objective` names.

By default ("balanced") a tensor's error counts twice over: divided by its own signal energy (its
relative error, 1 / SQNR: each layer's output error grows with its relative weight error whatever
the scale its weights happen to have, batch norms folding into kernels at any scale) and by the
mean tensor's (so the pooled weight SQNR counts too: relative errors alone let a few large tensors
fall far behind, "layers"). No data is needed. With "pooled" a tensor's error counts as it is, so
the allocation maximizes the pooled weight SQNR of the whole model: large tensors get the bits
their size asks for (the operating point of codecs that use one step size for the whole model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qpack.converter.allocate.options import Menu

DEFAULT_OBJECTIVE = "balanced"  # what --target-bpw and --target-size maximize unless --objective says
FIDELITY_OBJECTIVE = "layers"  # the proxy a fidelity goal's first rounds weigh by (its probes and pooled search correct it)
POOLED_OBJECTIVE = "pooled"  # the summed squared error itself: what --target-sqnr bounds
OUTPUTS_OBJECTIVE = "outputs"  # relative errors times measured output gains (allocate.sensitivity)


@dataclass(frozen=True)
class Objective:
    """How the allocation weighs a tensor's squared error: cost = importance(menu, all menus) x
    error / signal energy."""

    help: str
    importance: Callable[[Menu, list[Menu]], float]


def _balanced(m: Menu, ms: list[Menu]) -> float:
    mean = sum(x.signal for x in ms) / len(ms)
    return 1.0 + m.signal / mean if mean > 0 else 1.0


OBJECTIVES = {
    "layers": Objective("sum over tensors of squared error / signal energy (1 / SQNR): every layer counts alike",
                        lambda m, ms: 1.0),
    "balanced": Objective("layers plus the squared error over the mean tensor's signal energy: every layer counts, and "
                          "the pooled weight SQNR too", _balanced),
    "sized": Objective("sum over tensors of weights x squared error / signal energy: each tensor counts by its size, "
                       "whatever its scale", lambda m, ms: float(m.weight.size)),
    POOLED_OBJECTIVE: Objective("squared error summed over all tensors (the pooled weight SQNR): large tensors count by their "
                                "size and their scale", lambda m, ms: m.signal),
    # the gains are measured before weighing (allocate.sensitivity) and set as each menu's importance
    OUTPUTS_OBJECTIVE: Objective("each tensor's 1 / SQNR times its measured gain to the outputs (noise on one tensor at a time, "
                                 "seeded random inputs, no data): the predicted output error", lambda m, ms: m.importance),
}


def weigh(ms: list[Menu], objective: str) -> list[Menu]:
    """The menus, each one's importance set by `objective` (a key of OBJECTIVES)."""
    for m in ms:
        m.importance = OBJECTIVES[objective].importance(m, ms)
    return ms
