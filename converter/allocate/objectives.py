"""How an allocation weighs each tensor's error: the objectives `--objective` names.

By default ("balanced") a tensor's error counts twice over: divided by its own signal energy (its
relative error, 1 / SQNR: each layer's output error grows with its relative weight error whatever
the scale its weights happen to have, batch norms folding into kernels at any scale) and by the
mean tensor's (so the pooled weight SQNR counts too: relative errors alone let a few large tensors
fall far behind, "layers"). No data is needed. With "pooled" a tensor's error counts as it is, so
the allocation maximizes the pooled weight SQNR of the whole model: large tensors get the bits
their size asks for (the operating point of codecs that use one step size for the whole model).

A pooled error starves what is small (floored): a tensor of few weights or small values is nearly
free to break as the pool counts it, and its bits cost the most per weight (a coder's table, its
parameters are fixed costs), so equal slope hands it the cheapest option, 0 dB on a model's
smallest matrices, and the outputs pay for it. Pooled choices therefore keep every tensor's own
SQNR within FLOOR_DB of the pooled figure (the goal's, or the one a byte budget reaches).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from qpack.converter.allocate.knapsack import choose
from qpack.converter.allocate.options import Menu, Option

DEFAULT_OBJECTIVE = "balanced"  # what --target-bpw and --target-size maximize unless --objective says
FIDELITY_OBJECTIVE = "layers"  # the proxy a fidelity goal's first rounds weigh by (its probes and pooled search correct it)
POOLED_OBJECTIVE = "pooled"  # the summed squared error itself: what --target-sqnr bounds
OUTPUTS_OBJECTIVE = "outputs"  # relative errors times measured output gains (allocate.sensitivity)
FLOOR_DB = 10.0  # how far below the pooled SQNR a pooled choice lets one tensor's own SQNR fall (see floored)


@dataclass(frozen=True)
class Objective:
    """How the allocation weighs a tensor's squared error: cost = importance(menu, all menus) x
    error / signal energy; `floor`: choices within a byte budget keep each tensor's own SQNR within
    FLOOR_DB of the pooled SQNR they reach (floored_choice)."""

    help: str
    importance: Callable[[Menu, list[Menu]], float]
    floor: bool = False


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
                                f"size and their scale; no tensor's own SQNR more than {FLOOR_DB:g} dB below the pooled",
                                lambda m, ms: m.signal, floor=True),
    # the gains are measured before weighing (allocate.sensitivity) and set as each menu's importance
    OUTPUTS_OBJECTIVE: Objective("each tensor's 1 / SQNR times its measured gain to the outputs (noise on one tensor at a time, "
                                 "seeded random inputs, no data): the predicted output error", lambda m, ms: m.importance),
}


def weigh(ms: list[Menu], objective: str) -> list[Menu]:
    """The menus, each one's importance set by `objective` (a key of OBJECTIVES)."""
    for m in ms:
        m.importance = OBJECTIVES[objective].importance(m, ms)
    return ms


def floored(ms: list[Menu], db: float) -> list[Menu]:
    """The menus without the options whose tensor's own SQNR lies more than FLOOR_DB below `db`; a
    tensor none of whose options reaches that keeps its most precise one. The same Option objects:
    what is chosen among them is chosen among the menus."""
    out = []
    for m in ms:
        most = m.signal / 10 ** ((db - FLOOR_DB) / 10)
        out.append(replace(m, options=[o for o in m.options if o.error <= most] or m.options[-1:]))
    return out


def pooled_db(ms: list[Menu], chosen: list[Option]) -> float:
    """The pooled weight SQNR of one option per menu, by the menus' estimated errors."""
    noise = sum(o.error for o in chosen)
    return 10 * math.log10(sum(m.signal for m in ms) / noise) if noise > 0 else math.inf


def floored_choice(ms: list[Menu], budget: float) -> list[Option]:
    """knapsack.choose, then again among the options within FLOOR_DB of the pooled SQNR it reached
    (which the second choice lowers a little, so the floor holds for it too); the first where the
    floor's cheapest options do not fit the budget."""
    chosen = choose(ms, budget)
    fl = floored(ms, pooled_db(ms, chosen))
    if sum(m.options[0].nbytes for m in fl) > budget:
        return chosen
    return choose(fl, budget)


def chooser(objective: str) -> Callable[[list[Menu], float], list[Option]]:
    """How a size goal picks one option per menu within a byte budget under `objective`."""
    return floored_choice if OBJECTIVES[objective].floor else choose
