"""The search fidelity goals share: the smallest allocation whose outputs meet them in the runtime.

The goal is checked in the real runtime on the given inputs (a cosine goal on the inputs, on each
single input and on subsets of them, goal_subsets, keeping a margin for other inputs,
COSINE_MARGIN): the byte budget is bisected between the starting width and the most precise
setting (8 bits; schemes past a byte 12, measured again up to RESCUE_BITS where 12 falls short) for
the smallest allocation that meets it; the tensors that hurt most, measured one at a time, are then
weighted up and the search runs again. If the most precise setting everywhere cannot meet the
goal, that is a BudgetError (exit 3), unless `allow_float` lets tensors stay in float; where even
the float weights moved by float rounding miss it (goals.floor), the error says the inputs are to
blame. Last, the pooled weight SQNR is bisected for the fewest bytes that meet the goal (the
operating point of a codec with one step for the whole model), and the smaller of the two answers kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from qpack.converter.allocate.goals.floor import FLOAT_FLOOR, float_floor
from qpack.converter.allocate.goals.registry import Found, Task
from qpack.converter.allocate.goals.target_sqnr import MAX_SQNR_DB
from qpack.converter.allocate.knapsack import choose, within_error
from qpack.converter.allocate.options import WIDE_BITS, Menu, Option, bpw_budget, hull, largest, plan, weights_of
from qpack.converter.policy import Policy
from qpack.converter.quant import get_quantizer
from qpack.formats.errors import BudgetError, OptionError

if TYPE_CHECKING:
    from qpack.converter.allocate.goals import Goal

# schemes past a byte are measured again up to 16 where a fidelity goal's most precise 12-bit
# setting (options.WIDE_BITS) misses it: a pose landmark model
# on noise images keeps 0.9825 on its worst input at 12 bits everywhere, 0.99993 at 16 (its presence
# score is a sigmoid at -10: weights moved by 2^-11 of their values take that output to 0.991)
RESCUE_BITS = 16
GOAL_PARTS = 4  # a cosine goal holds on the inputs and on each of this many runs of them
# ... and, where a run has fewer samples than this, on the inputs without each run: one sample's
# cosine says nothing of an output with one value per sample (a speech probability)
MIN_PART = 4
# the search keeps each cosine's error within this share of what the goal allows: the allocation it
# settles on is the smallest of many that met the goal on these inputs, so it sits at their edge,
# and another draw lands lower (palm_detection_lite: 0.99066 on its tune inputs, every subset within
# 0.0006 of it, 0.98960 on another draw)
COSINE_MARGIN = 0.8
# fewer inputs than this are a thin stand-in for others (four 32-ms audio chunks: Silero kept 0.998
# on them and 0.979 on four others; 0.999 on both draws of 16), and the search says so
FEW_INPUTS = 16
POOLED_SPAN_DB, POOLED_STEP_DB = 15.0, 0.25  # how far from the best so far the pooled search looks, and its resolution


def least_cosine(result: dict[str, Any]) -> float:
    """The least cosine of an evaluation's outputs, over all its inputs and over each single input
    (converter.evaluate.worst_input_cosine): a cosine goal holds on both."""
    return min(min(o["cosine"], o.get("worst_input_cosine", 1.0)) for o in result["outputs"])


def goal_subsets(inputs: Any) -> list[Any]:
    """The subsets of the inputs a cosine goal must hold on besides the whole: each of GOAL_PARTS
    runs of them and, where those runs are short, the inputs without each run. An allocation found
    on the edge of the goal for the whole falls below it on other inputs of the same kind; the
    subsets say how far one draw of inputs is from another."""
    parts = inputs.parts(GOAL_PARTS)
    short = inputs.count > 2 and bool(parts) and min(p.count for p in parts) < MIN_PART  # of two, each rest is the other part
    return parts + inputs.rests(GOAL_PARTS) if short else parts


def search(task: Task, value: Any) -> Found:
    """The fidelity goals of `task.goal`, all of them met on its inputs (`value`: any one of them; the goal holds all)."""
    from qpack.converter.evaluate import evaluate, run_all
    from qpack.converter.runtime import open_runner

    goal, inputs, policy = task.goal, task.inputs, task.policy
    if inputs is None:
        raise OptionError("a fidelity goal needs inputs: --inputs, --images or --dataset")
    original = open_runner(task.model_path)
    reference = run_all(original, inputs)
    # a cosine goal holds on subsets of the inputs too (goal_subsets): met on the whole alone, an
    # allocation tuned to the edge falls below it on other inputs of the same kind
    subsets = any(spec.parts for spec, _ in goal.given())
    parts = [(h, run_all(original, h)) for h in goal_subsets(inputs)] if subsets else []
    checks: list[str] = []

    def evaluate_policy(q: Policy) -> dict[str, Any]:
        task.convert_to(q)
        return evaluate(task.model_path, inputs, qpk=task.trial, reference=reference, parts=parts)

    def note(line: str) -> None:
        checks.append(line)
        if task.log:
            task.log(line)

    if subsets and inputs.count < FEW_INPUTS:
        note(f"only {inputs.count} inputs: the cosine goal holds on them and their subsets, and another draw may land "
             f"lower; {FEW_INPUTS} or more stand for other inputs better")
    widens = any(get_quantizer(s).spec().max_bits > WIDE_BITS for s in goal.schemes or (policy.scheme,))
    ms = task.menus
    try:
        p, chosen, words = for_fidelity(policy, goal, ms, evaluate_policy, note,
                                        wider=(lambda: task.remeasure(RESCUE_BITS)) if widens else None,
                                        alone=lambda s: task.remeasure(RESCUE_BITS if widens else WIDE_BITS, (s,)))
    except BudgetError as e:
        floor = replace(goal, cosine_share=1.0).met(float_floor(task.src, ms, task.model_path, inputs, reference, parts, task.workdir))
        if floor[0]:
            raise
        raise BudgetError(f"on these inputs the outputs are at the float floor, where no quantizer can keep them: the "
                          f"float weights, each moved by random noise of {FLOAT_FLOOR:.0e} of its value, give {floor[1]}; "
                          f"use inputs the model responds to ({e})") from e
    return p, chosen, {"met": words, "checks": checks, "inputs": inputs.description}


def for_fidelity(policy: Policy, goal: Goal, ms: list[Menu], evaluate_policy: Callable[[Policy], dict[str, Any]],
                 log: Callable[[str], None] | None = None, rounds: int = 2,
                 wider: Callable[[], list[Menu]] | None = None,
                 alone: Callable[[str], list[Menu]] | None = None) -> tuple[Policy, list[Option], str]:
    """The smallest allocation (bisected over the byte budget, from the starting width to the most
    precise setting) that meets a fidelity goal in the runtime; tensors that hurt most are weighted
    up and the search rerun when the goal is met only near the top; then the pooled search
    (_pooled_search) may find a smaller one. A cosine goal is searched with COSINE_MARGIN, or
    without it where the most precise setting meets the goal only so. Where the most precise
    setting misses the goal (with its margin), `wider` menus (RESCUE_BITS) replace `ms`, in place, and
    then, where it still misses, the menus of one scheme alone (`alone`, see _one_scheme)."""
    say = log or (lambda s: None)

    def most_precise() -> tuple[Policy, dict[str, Any]]:
        # the budget is bisected over each menu's convex hull: between neighbouring budgets tensors move
        # by whole hull steps, each worth its bytes, and what is found keeps a margin on other inputs
        # (over the whole front the search settles on the tune inputs' edge: Silero op15 kept 0.990
        # there and 0.982 on another draw)
        for m in ms:
            m.options = hull(m.options)
        p = plan(policy, ms, [m.options[-1] for m in ms], "largest")
        return p, evaluate_policy(p)

    top_policy, top = most_precise()
    if goal.min_cosine is not None:
        goal = replace(goal, cosine_share=COSINE_MARGIN)
    if wider is not None:
        ok, words = goal.met(top)
        if not ok:
            wide = sorted({o.scheme for m in ms for o in m.options if get_quantizer(o.scheme).spec().max_bits > WIDE_BITS})
            say(f"every tensor at its most precise setting: {words}; measuring {' and '.join(wide)} up to {RESCUE_BITS} bits")
            ms[:] = wider()
            top_policy, top = most_precise()
    if not goal.met(top)[0] and alone is not None:
        top_policy, top = _one_scheme(policy, goal, ms, alone, top_policy, top, evaluate_policy, say)
    if goal.min_cosine is not None:
        if goal.met(top)[0]:
            say(f"searching for cosines of at least {goal.cosine_floor:.5f} on these inputs (a margin for other inputs)")
        elif replace(goal, cosine_share=1.0).met(top)[0]:
            goal = replace(goal, cosine_share=1.0)
            say("the most precise setting meets the cosine goal only without a margin for other inputs: searching without it")
    ok, words = goal.met(top)
    say(f"every tensor at its most precise setting: {words}")
    steps = 7
    if not ok and goal.allow_float:
        for m in ms:  # float as the source stores it: no error, every byte
            m.options.append(Option(0, None, None, "", m.weight.nbytes, 0.0, "float", keep=True))
        top_policy = plan(policy, ms, [m.options[-1] for m in ms], "largest")
        ok, words = goal.met(evaluate_policy(top_policy))
        say(f"every tensor kept in float: {words}")
        steps = 10  # a range four times as wide
    if not ok:
        hint = "" if goal.allow_float else "; --allow-float lets qpack keep the tensors that need it in float"
        raise BudgetError(f"the goal is not met even with every tensor at its most precise setting ({words}){hint}")
    best: tuple[Policy, list[Option], str] = (top_policy, [m.options[-1] for m in ms], words)
    floor = float(sum(m.options[0].nbytes for m in ms))
    start = min(max(bpw_budget(ms, policy.bits), floor), largest(ms))

    seen: dict[tuple[Option, ...], tuple[bool, str]] = {}  # an allocation is evaluated once, whatever the round

    def attempt(cand: list[Option], how: str) -> bool:
        nonlocal best
        p = plan(policy, ms, cand, f"smallest allocation meeting the goal in the runtime ({how})")
        if tuple(cand) not in seen:
            seen[tuple(cand)] = goal.met(evaluate_policy(p))
            say(f"{8 * sum(o.nbytes for o in cand) / weights_of(ms):.3f} bits/weight ({how}): {seen[tuple(cand)][1]}")
        ok, words = seen[tuple(cand)]
        if ok and sum(o.nbytes for o in cand) < sum(o.nbytes for o in best[1]):
            best = (p, cand, words)
        return ok

    for r in range(rounds):
        # --bits is the first guess; then bisection on bytes between what fails and what meets the goal
        lo, hi = (floor, start) if attempt(choose(ms, start), f"round {r + 1}") else (start, float(sum(o.nbytes for o in best[1])))
        for _ in range(steps):
            if hi - lo <= 0.01 * hi:
                break
            mid = (lo + hi) / 2
            if attempt(choose(ms, mid), f"round {r + 1}"):
                hi = mid
            else:
                lo = mid
        if r + 1 < rounds and lo > floor:
            _weigh_by_damage(policy, ms, choose(ms, lo), evaluate_policy, say)
            start = sum(o.nbytes for o in best[1])
    _pooled_search(ms, best[1], steps, attempt)
    if all(o.keep for o in best[1]):
        raise BudgetError(f"the goal is met only with every tensor kept in float ({best[2]}): nothing is left to quantize")
    return best


def _one_scheme(policy: Policy, goal: Goal, ms: list[Menu], alone: Callable[[str], list[Menu]], top_policy: Policy,
                top: dict[str, Any], evaluate_policy: Callable[[Policy], dict[str, Any]],
                say: Callable[[str], None]) -> tuple[Policy, dict[str, Any]]:
    """Where the least weight error of every tensor misses the goal, each scheme's own most precise
    setting everywhere, in turn (`alone(scheme)`: the menus measured for that scheme only): weight
    error ranks schemes apart from what they do to the outputs (8-bit asym per channel kept
    MediaPipe's float16 face detector at 0.9898 on random inputs, sym 0.9978). The first that meets
    the goal (or meets it, without the margin, where the mix did not) replaces the menus; else
    nothing changes."""
    relaxed = replace(goal, cosine_share=1.0)
    schemes = sorted({o.scheme for m in ms for o in m.options if not o.keep})
    for s in schemes if len(schemes) > 1 else ():
        mine = alone(s)
        for m in mine:
            m.options = hull([o for o in m.options if o.scheme == s])
        if any(not m.options for m in mine):
            continue
        p = plan(policy, mine, [m.options[-1] for m in mine], f"largest {s}")
        got = evaluate_policy(p)
        if goal.met(got)[0] or (relaxed.met(got)[0] and not relaxed.met(top)[0]):
            say(f"every tensor at its most precise {s} setting: {goal.met(got)[1]}, where the least weight error missed: "
                f"{s} alone from here")
            ms[:] = mine
            return p, got
    return top_policy, top


def _pooled_search(ms: list[Menu], best: list[Option], steps: int, attempt: Callable[[list[Option], str], bool]) -> None:
    """The operating point of codecs with one step for the whole model: the fewest bytes at a pooled
    weight SQNR (within_error), that SQNR bisected for the lowest that meets the goal, starting at
    the best allocation's. Where the weighted searches settle high (their proxy misjudges which
    tensors matter), this finds what a uniform step gets."""
    signal = sum(m.signal for m in ms)
    if signal <= 0:
        return

    def db_of(opts: list[Option]) -> float:
        noise = sum(o.error for o in opts)
        return MAX_SQNR_DB if noise <= 0 else min(MAX_SQNR_DB, 10 * math.log10(signal / noise))

    def at(db: float) -> bool:
        return attempt(within_error(ms, signal / 10 ** (db / 10)), f"pooled {db:.2f} dB")

    here = db_of(best)
    lo, hi = (max(0.0, here - POOLED_SPAN_DB), here) if at(here) else (here, min(here + POOLED_SPAN_DB, db_of([m.options[-1] for m in ms])))
    for _ in range(steps):
        if hi - lo <= POOLED_STEP_DB:
            break
        mid = (lo + hi) / 2
        if at(mid):
            hi = mid
        else:
            lo = mid


def _weigh_by_damage(policy: Policy, ms: list[Menu], failing: list[Option], evaluate_policy: Callable[[Policy], dict[str, Any]],
                     say: Callable[[str], None], top: int = 6) -> None:
    """Measure, one at a time, the damage of the tensors whose proxy error is largest at a failing
    allocation (the others at their most precise setting), and weight their error by it."""
    ranked = sorted(range(len(ms)), key=lambda i: -ms[i].cost(failing[i]))[:top]
    damages = {}
    for i in ranked:
        opts = [m.options[-1] for m in ms]
        opts[i] = failing[i]
        result = evaluate_policy(plan(policy, ms, opts, "probe"))
        damages[i] = 1 - least_cosine(result)
    mean = float(np.mean(list(damages.values()))) or 1.0
    proxies = {i: ms[i].cost(failing[i]) for i in ranked}
    mean_proxy = float(np.mean(list(proxies.values()))) or 1.0
    for i, d in damages.items():
        # a tensor whose measured damage is out of proportion to its proxy error counts for more
        ratio = (d / mean) / max(proxies[i] / mean_proxy, 1e-9)
        ms[i].importance *= float(np.clip(ratio, 0.25, 16))
        say(f"  {ms[i].weight.name}: damage {d:.2e}, weight x{ms[i].importance:.2f}")
