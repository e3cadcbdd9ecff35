"""Automatic bit allocation: the user states a goal, qpack picks each tensor's width, grouping and scheme.

Data-free (`--target-bpw`, `--target-size`): every quantized tensor gets a menu of settings, each
with its measured cost (code and parameter bytes) and error (squared error, estimated on a sample
of whole groups); the allocation minimizes the total *weighted* error under the size budget by
equal slope: for a multiplier lam each tensor takes the setting minimizing error + lam * bytes, and
lam is bisected until the budget is met, then the bytes left over go to the best remaining
upgrades. By default ("balanced") a tensor's error counts twice over: divided by its own signal
energy (its relative error, 1 / SQNR: each layer's output error grows with its relative weight
error whatever the scale its weights happen to have, batch norms folding into kernels at any
scale) and by the mean tensor's (so the pooled weight SQNR counts too: relative errors alone let
a few large tensors fall far behind, "layers"). No data is needed; OBJECTIVES holds the other
weighings. With "pooled" a tensor's error counts as it is, so the allocation maximizes the pooled
weight SQNR of the whole model: large tensors get the bits their size asks for (the operating
point of codecs that use one step size for the whole model).

`--target-sqnr DB` is the dual: the fewest bytes whose pooled weight SQNR is at least DB, by the
same equal slope (lam bisected until the summed error fits), checked on real conversions.

With inputs (`--min-cosine`, `--max-accuracy-drop`), the goal is checked in the real runtime (a
cosine goal on the inputs, on each single input and on subsets of them, goal_subsets, keeping a
margin for other inputs, COSINE_MARGIN): the budget is bisected between the starting
width and the most precise setting (8 bits; sym and dq 12, measured again up to RESCUE_BITS where
12 falls short) for the smallest allocation that meets it; the tensors that hurt most, measured one
at a time, are then weighted up and the search runs again. If the most precise setting everywhere
cannot meet the goal, that is a BudgetError (exit 3), unless `allow_float` lets tensors stay in
float; where even the float weights moved by float rounding miss it (float_floor), the error says
the inputs are to blame. Last, the pooled weight SQNR is bisected for the fewest
bytes that meet the goal (the operating point of a codec with one step for the whole model), and
the smaller of the two answers kept.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qpack.converter.measure import code_histogram, entropy_bits
from qpack.converter.policy import Decision, Policy
from qpack.converter.quant import get_quantizer
from qpack.converter.quant.base import WIDENED, Quantizer, sample_rows
from qpack.converter.quant.dq import warm_trellis
from qpack.converter.quant.rdo import encode as rdo_encode
from qpack.converter.quant.rdo import estimate as rdo_estimate
from qpack.formats.errors import BudgetError, OptionError
from qpack.formats.model import SourceModel, Weight
from qpack.formats.qpk import Grouping, ans, packed_size
from qpack.formats.qpk.spec import expansion_limit

SAMPLE_ELEMENTS = 1 << 16  # weights per tensor and setting the error is measured on
MAX_BITS = 8
# sym goes past a byte: a full range at a step finer than 255 levels allow (outliers kept, the bulk
# fine), what entropy-coded high-fidelity goals want and what rescues a model 8 bits cannot carry
WIDE_BITS = 12
# ... and to 16 where a fidelity goal's most precise 12-bit setting misses it: a pose landmark model
# on noise images keeps 0.9825 on its worst input at 12 bits everywhere, 0.99993 at 16 (its presence
# score is a sigmoid at -10: weights moved by 2^-11 of their values take that output to 0.991)
RESCUE_BITS = 16
WIDE_RUN = 4  # codes per stored weight that a wide ans table typically takes (its run shift is chosen per table)
# one-bit codes keep two levels per group: the allocation never needs them to reach a budget it
# can meet at all, and the summed relative error underrates how they break a network
MIN_WIDTH = 2
CODED_MARGIN, CODED_OVERHEAD = 1.02, 64  # entropy-coded codes: within 2% of the entropy, plus a table
BLOCKS = (32, 128)
MENU_RDO, MENU_RDO_BITS = 0.1, 6  # the rate-aware rounding ans menus offer, and the widest width they offer it at
MENU_RDO_CLIPS = ("minmax", *WIDENED)
MENU_DQ = 0.4  # the lambda dq menus search with (squared scale units per bit): at equal SQNR it beat 0.1 by 1-2%


DEFAULT_OBJECTIVE = "balanced"  # what --target-bpw and --target-size maximize unless --objective says
FIDELITY_OBJECTIVE = "layers"  # the proxy a fidelity goal's first rounds weigh by (its probes and pooled search correct it)
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
KEPT_REASON = "kept in float: the fidelity goal needs it (--allow-float)"
AUTO_SCHEMES = ("asym", "sym")  # what a goal chooses each tensor's scheme from when none is given
CODED_SCHEMES = ("dq",)  # and, with the ans codec, these too (a trellis search pays where codes are entropy-coded)
TRELLIS_THIN = 4  # a trellis scheme's menu measures every 4th weight of the sample
DP_BUCKETS, DP_CELLS = 4096, 1 << 26  # error steps of the --target-sqnr knapsack, and its table's size limit
MAX_SQNR_DB = 100.0  # beyond what 8-bit codes give any real tensor: the goal is a typo
LOW_BITS_CLIP = 6  # at or below this width the range is searched by least squares (clip mse)


@dataclass(frozen=True)
class Option:
    """One setting of one tensor, with what it costs and what it loses."""

    bits: int
    axis: int | None
    block: int | None
    clip: str
    nbytes: int  # codes (packed) + parameters
    error: float  # squared error of the whole tensor (estimated)
    scheme: str = "asym"
    keep: bool = False  # the tensor stays in float as the source stores it (fidelity goals, --allow-float)
    rdo: float = 0.0  # lambda of rate-aware rounding (entropy-coded options)
    half: bool = False  # scales stored as float16 (per channel or block; see menu)

    def decision(self, why: str) -> Decision:
        if self.keep:
            return Decision(False, reason=KEPT_REASON, why=why)
        dtypes = {"scale": "<f2"} if self.half else None
        return Decision(True, bits=self.bits, axis=self.axis, block=self.block, dtypes=dtypes, scheme=self.scheme, clip=self.clip,
                        rdo=self.rdo, why=why)


@dataclass
class Menu:
    """A tensor's options, the Pareto front of (bytes, error) (each has less error than every cheaper
    one), cheapest first."""

    weight: Weight
    signal: float
    options: list[Option]
    importance: float = 1.0  # multiplies the tensor's relative error

    def cost(self, o: Option) -> float:
        return self.importance * o.error / max(self.signal, 1e-30)


@dataclass(frozen=True)
class Objective:
    """How the data-free allocation weighs a tensor's squared error: cost = importance(menu, all
    menus) x error / signal energy."""

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
    "pooled": Objective("squared error summed over all tensors (the pooled weight SQNR): large tensors count by their "
                        "size and their scale", lambda m, ms: m.signal),
}


def _groupings(w: Weight, per_channel: bool) -> list[tuple[int | None, int | None]]:
    out: list[tuple[int | None, int | None]] = [(None, None)]
    if w.axis is not None and len(w.shape) > 1:
        out.append((w.axis, None))
    if w.reduction is not None:
        n = w.shape[w.reduction]
        out += [(w.reduction, b) for b in BLOCKS if n >= 2 * b]
    return out


class _View:
    """One tensor under one grouping as the settings of its menu are measured: evenly spaced whole
    groups (a row each; for a single group, the whole tensor), the measuring sample of them (every
    k-th weight of each row) and each scheme's range statistics. Settings are fitted on the sampled
    groups only: a group's parameters depend on its own weights alone."""

    def __init__(self, x: NDArray[np.float32], g: Grouping):
        self.size = x.size
        xv, axes = g.blocked(x)
        keep = tuple(i for i in range(xv.ndim) if i not in axes)
        self.groups = math.prod(xv.shape[i] for i in keep)
        rows = np.transpose(xv, keep + axes).reshape(self.groups, -1)
        per_row = rows.shape[1]
        take = max(1, min(self.groups, SAMPLE_ELEMENTS // max(per_row, 1)))
        self.rows = np.ascontiguousarray(rows[np.linspace(0, self.groups - 1, take).round().astype(np.int64)])
        self.search = sample_rows(self.rows, (1,), SAMPLE_ELEMENTS)
        step = max(1, per_row * take // SAMPLE_ELEMENTS)
        self.sample = np.ascontiguousarray(self.rows[:, ::step])
        self._stats: dict[str, Any] = {}

    def stats(self, q: Any) -> Any:
        if q.name not in self._stats:
            self._stats[q.name] = q.stats(self.rows, (1,))
        return self._stats[q.name]


def _sample_error(q: Any, v: _View, bits: int, clip: str, dtypes: dict[str, str] | None,
                  rdo: float = 0.0) -> tuple[float, int, float, int]:
    """(squared error of the whole tensor, parameter bytes, order-0 entropy of the codes in bits,
    codes from the lowest to the highest present), measured on the view's sample and scaled up."""
    # ranking settings needs less than the final conversion: no refinement, a smaller sample, every other factor
    params, used = q.fit(v.rows, (1,), bits, clip, dtypes, refine=False, stride=2, stats=v.stats(q), sample=v.search)
    sample = v.sample
    if getattr(q, "trellis", False):  # a trellis search costs ~10x a rounding: a quarter of the sample
        sample = np.ascontiguousarray(sample[:, ::TRELLIS_THIN]) if sample.shape[1] >= TRELLIS_THIN else sample
        codes = q.encode(sample, bits, params, rdo or None)
    elif rdo:
        rate = rdo_estimate(q, lambda: [(sample, params)], bits, rdo)
        codes = rdo_encode(q, sample, bits, params, rate, rdo)
    else:
        codes = q.encode(sample, bits, params)
    y = q.spec().dequantize(codes, q.flat(params, used), bits, Grouping(0))
    y -= sample
    np.square(y, out=y)
    err = float(y.sum(dtype=np.float64)) * (v.size / sample.size)
    taken = v.rows.shape[0]
    param_bytes = sum(np.asarray(p).size // taken * v.groups * np.dtype(used[k]).itemsize for k, p in params.items())
    hist = code_histogram(codes, bits)
    present = np.flatnonzero(hist)
    return err, param_bytes, entropy_bits(hist), int(present[-1] - present[0] + 1) if present.size else 1


F16_TINY = float(np.finfo(np.float16).tiny)  # the smallest normal float16
F16_MAX = float(np.finfo(np.float16).max)
WIDEST_CLIP = max(WIDENED.values())  # the most a clip widens a range by (loose3)


def _group_tops(x: NDArray[np.float32], g: Grouping) -> tuple[float, float]:
    """The least and the greatest of the groups' largest magnitudes, all-zero groups aside (a
    group's scale is about its largest magnitude over half its levels); (0, 0) if every group is zero."""
    xv, axes = g.blocked(x)
    top = np.abs(xv).max(axis=axes)
    top = top[top > 0]
    return (float(top.min()), float(top.max())) if top.size else (0.0, 0.0)


def _half_fits(tops: tuple[float, float], levels: int, bits: int) -> bool:
    """Whether every scale of a setting is a normal float16 whatever its clip: a scale is at least a
    group's largest magnitude over levels - 1 (asym; sym and dq twice that), times the least factor
    clip mse may shrink it by where it is used, and at most twice it over levels - 1, widened by up
    to 2^(3/4) (loose3)."""
    least, most = tops
    shrink = min(Quantizer.shrinks) if bits <= LOW_BITS_CLIP else 1.0
    steps = max(levels - 1, 1)
    return least * shrink / steps >= F16_TINY and most * 2 * WIDEST_CLIP / steps <= F16_MAX


def menu(w: Weight, scheme: str, per_channel: bool = True, widths: range = range(MIN_WIDTH, MAX_BITS + 1),
         coded: str | None = None, half: bool = True) -> Menu:
    """The options of one weight under `scheme`, pruned to their Pareto front.

    `coded`: the codec that will store the codes ("ans", "zstd"), where an option's code bytes are
    estimated from the codes' order-0 entropy (with a margin) instead of their packed size: at every
    width for ans, at widths that fill whole bytes for zstd (a byte compressor finds little in codes
    that straddle bytes).
    """
    q = get_quantizer(scheme)
    trellis = getattr(q, "trellis", False)
    x = np.asarray(w.array, dtype=np.float32)
    signal = float(np.square(x, dtype=np.float64).sum())  # not np.dot: a BLAS call leaves its threads spinning on the other cores
    opts = []
    for axis, block in _groupings(w, per_channel):
        if trellis and block is not None:  # its search runs in the tensor's order, which blocks are not
            continue
        v = _View(x, Grouping(axis, block))
        # a scale per channel or block is stored as float16 (unless `half` is off): the codes are chosen
        # against the rounded scale, so the error hardly moves, and small channels (a 3x3 depthwise
        # kernel) pay half; not where a scale could fall below float16's normal range and lose digits
        tops = _group_tops(x, Grouping(axis, block)) if half and axis is not None else None
        for bits in widths:
            if not q.spec().min_bits <= bits <= q.spec().max_bits or (bits > MAX_BITS and block is not None):
                continue
            half_here = tops is not None and _half_fits(tops, q.levels(bits), bits)
            dtypes = {"scale": "<f2"} if half_here else None
            # entropy-coded, a full range can cost fewer bytes than a clipped one: its codes crowd the middle
            priced = coded == "ans" or (coded is not None and 8 % bits == 0)
            clips = ("mse", "minmax") if priced and bits <= LOW_BITS_CLIP else ("mse",) if bits <= LOW_BITS_CLIP else ("minmax",)
            variants = [(c, 0.0) for c in clips]
            if trellis:  # its own rounding is rate-aware; steps half a bit apart, the mix of tensors fills in
                variants = [("minmax", MENU_DQ), ("loose2", MENU_DQ)]
            elif coded == "ans" and block is None and q.name == "sym":  # asym: under 0.1% for a third of the time
                # an arithmetic coder prices codes by their frequencies: steps between the widths', and
                # rounding that gives up a little error for fewer bits (at the low rates where it pays)
                variants += [(c, 0.0) for c in WIDENED]
                if bits <= MENU_RDO_BITS:
                    variants += [(c, MENU_RDO) for c in MENU_RDO_CLIPS]
            for clip, lam in variants:
                err, pbytes, entropy, span = _sample_error(q, v, bits, clip, dtypes, lam)
                code_bytes = packed_size(w.size, bits)
                if priced:  # plus the table: past a byte, a weight per run of codes over the span
                    # a table of a weight per symbol, or a profile of a few knots where that is smaller
                    table = CODED_OVERHEAD + span // WIDE_RUN if bits > MAX_BITS else \
                        min(CODED_OVERHEAD, ans.profile_bytes(1 << bits, span, span // 2) + ans.FRAME_BYTES)
                    least = math.ceil(w.size * entropy / 8)
                    # a stream that would shrink past the format's expansion limit is stored packed
                    if code_bytes <= expansion_limit(least):
                        code_bytes = min(code_bytes, math.ceil(least * CODED_MARGIN) + table)
                opts.append(Option(bits, axis, block, clip, code_bytes + pbytes, err, scheme, rdo=lam, half=half_here))
    return Menu(w, signal, _front(opts))


def merged(ms: list[Menu]) -> Menu:
    """One tensor's menus under several schemes as one: the front of all their options."""
    return Menu(ms[0].weight, ms[0].signal, _front([o for m in ms for o in m.options]), ms[0].importance)


def _front(opts: list[Option]) -> list[Option]:
    """The options nothing cheaper beats: strictly less error than everything cheaper, cheapest first.
    Menus keep the whole front, not just its convex hull: the knapsack tables choose exactly among
    what they are given, and a point inside the hull can be what fills a budget."""
    front: list[Option] = []
    for o in sorted(opts, key=lambda o: (o.nbytes, o.error)):
        if not front or o.error < front[-1].error:
            front.append(o)
    return front


def _hull(opts: list[Option]) -> list[Option]:
    """The options no mix of others beats: the lower convex hull of (bytes, error), cheapest first."""
    hull: list[Option] = []
    for o in _front(opts):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or above the segment a -> o
            if (b.error - a.error) * (o.nbytes - a.nbytes) >= (o.error - a.error) * (b.nbytes - a.nbytes):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def choose(menus: list[Menu], budget: float) -> list[Option]:
    """The least summed cost within `budget` bytes: a knapsack table over the budget in DP_BUCKETS
    steps where it fits in DP_CELLS, else equal slope (per tensor the option minimizing cost + lam *
    bytes, lam bisected to fit); then the leftover bytes buy the upgrades with the most error saved
    per byte. Equal slope alone stops at the vertices of the summed hull, which with coarse menus
    can leave much of the budget unspent.

    Raises:
        BudgetError: even the cheapest option of every tensor exceeds the budget.
    """
    cheapest = sum(m.options[0].nbytes for m in menus)
    if cheapest > budget:
        raise BudgetError(f"the goal leaves {budget:,.0f} bytes for weights; the fewest they can take is {cheapest:,}")

    def pick(lam: float) -> list[Option]:
        out = []
        for m in menus:
            costs = [m.cost(o) + lam * o.nbytes for o in m.options]
            out.append(m.options[int(np.argmin(costs))])
        return out

    table = _solve(menus, Menu.cost, _bytes, budget)
    if table is not None:
        return _fill(menus, table, budget)
    lo, hi = 0.0, 1.0
    while sum(o.nbytes for o in pick(hi)) > budget:
        hi *= 4
        if hi > 1e30:
            break
    if sum(o.nbytes for o in pick(lo)) <= budget:
        return pick(lo)
    for _ in range(80):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e6 if hi > 1e-300 else 0.0
        if sum(o.nbytes for o in pick(mid)) > budget:
            lo = mid
        else:
            hi = mid
        if hi - lo <= hi * 1e-9:
            break
    return _fill(menus, pick(hi), budget)


def _fill(menus: list[Menu], chosen: list[Option], budget: float) -> list[Option]:
    """The bytes left under `budget` buy the upgrades with the most error saved per byte, in turn."""
    return _greedy(menus, chosen, +1, Menu.cost, _bytes, budget - sum(o.nbytes for o in chosen))


def _greedy(ms: list[Menu], chosen: list[Option], step: int, value: Callable[[Menu, Option], float],
            weight: Callable[[Menu, Option], float], slack: float) -> list[Option]:
    """Move tensors one option along their menus (step +1: up, -1: down), each time the move with the
    most `value` saved per `weight` added, while the added weight fits in `slack`."""
    while True:
        best, rate = None, 0.0
        for i, (m, o) in enumerate(zip(ms, chosen)):
            k = m.options.index(o) + step
            if 0 <= k < len(m.options):
                added = weight(m, m.options[k]) - weight(m, o)
                r = (value(m, o) - value(m, m.options[k])) / max(added, 1e-300)
                if added <= slack and r > rate:
                    best, rate = i, r
        if best is None:
            return chosen
        m = ms[best]
        nxt = m.options[m.options.index(chosen[best]) + step]
        slack -= weight(m, nxt) - weight(m, chosen[best])
        chosen[best] = nxt


def _bytes(m: Menu, o: Option) -> float:
    return o.nbytes


def _error(m: Menu, o: Option) -> float:
    return o.error


def plan(policy: Policy, menus: list[Menu], options: list[Option], why: str) -> Policy:
    """The policy with each menu's tensor fixed to its chosen option."""
    fixed = tuple((m.weight.key, o.decision(why)) for m, o in zip(menus, options))
    return replace(policy, plan=fixed)


PROCESS_WEIGHTS = 1 << 18  # from this many weights, menus are measured in worker processes
IN_FLIGHT_BYTES = 256 << 20  # tensors' values sent ahead to worker processes, at most (and at least one per worker)


def menus(model: SourceModel, policy: Policy, progress: Callable[[int, int], None] | None = None,
          coded: str | None = None, schemes: tuple[str, ...] | None = None,
          near: dict[str, int] | None = None, widest: int = WIDE_BITS) -> list[Menu]:
    """A menu for each weight the policy quantizes: widths 2 to 8 (`widest` for sym and dq) under the policy's
    scheme, or under each of `schemes` (the tensor then takes whichever scheme its chosen option has);
    with `near` (weight key -> width, see step_widths), only the widths NEAR_BELOW below to
    NEAR_ABOVE above it.

    A menu is hundreds of small measurements, whose Python between numpy calls holds the GIL: on
    models of PROCESS_WEIGHTS or more they run in forked worker processes (threads gained nothing on
    the recognizer, processes 1.6x on two cores), each sent one tensor's values at a time. Only
    where forking is safe: on Linux, from a process with no other Python thread running (a library
    caller may hold locks in threads of its own; native pools such as BLAS's are not seen); else,
    or if a worker dies or cannot be started, in threads (the same menus)."""
    from concurrent.futures import BrokenExecutor, ProcessPoolExecutor, ThreadPoolExecutor

    from qpack.converter.convert import default_workers, in_order

    chosen = [w for w in model.weights if policy.decide(w).quantize]
    names = schemes or (policy.scheme,)
    if schemes is not None and coded == "ans":
        names = (*names, *CODED_SCHEMES)
    half = policy.param_dtype != "fp32"
    workers = default_workers()
    near = near or {}

    def job(w: Weight, send: bool) -> Callable[[], tuple[float, list[Option]]]:
        """One weight's menu; `send`: its values go with it, to a worker process."""
        return partial(_menu_options, _portable(w) if send else w, names, coded, half, near.get(w.key), widest)

    def measure(pool: Any, jobs: Iterable[Callable[[], tuple[float, list[Option]]]], ahead: int) -> list[Menu]:
        out = []
        for i, (w, (signal, options)) in enumerate(zip(chosen, in_order(pool, jobs, ahead))):
            out.append(Menu(w, signal, options))
            if progress:
                progress(i + 1, len(chosen))
        return out

    if workers > 1 and sum(w.size for w in chosen) >= PROCESS_WEIGHTS and _fork_safe():
        if any(getattr(get_quantizer(n), "trellis", False) for n in names):
            warm_trellis()  # compiled or loaded once here, not once in every worker
        largest = max(w.size * 4 for w in chosen)
        ahead = max(workers + 1, min(4 * workers, IN_FLIGHT_BYTES // largest))
        pool = ProcessPoolExecutor(workers, mp_context=_FORK, initializer=_worker_start, initargs=(os.getpid(),))
        try:
            return measure(pool, (job(w, True) for w in chosen), ahead)
        except (BrokenExecutor, OSError):  # a worker died (out of memory?) or could not be forked: threads
            pass
        finally:
            pool.shutdown(cancel_futures=True)
    with ThreadPoolExecutor(workers) as threads:
        return measure(threads, (job(w, False) for w in chosen), workers + 1)


_LINUX = sys.platform.startswith("linux")
_FORK = multiprocessing.get_context("fork") if _LINUX else None


def _fork_safe() -> bool:
    return _LINUX and threading.active_count() == 1


def _worker_start(parent: int) -> None:
    """A menu worker: Ctrl-C is for the parent (which stops with one line), and the worker ends with
    its parent, however that ends (a killed parent would otherwise leave it waiting forever)."""
    import ctypes
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - Linux has it
        pass
    if os.getppid() != parent:  # the parent ended before the signal was asked for
        os._exit(1)


PR_SET_PDEATHSIG = 1  # prctl: the signal a process gets when its parent ends


NEAR_BELOW, NEAR_ABOVE = 4, 1  # the widths a --target-sqnr menu keeps around its tensor's step_widths


def step_widths(model: SourceModel, policy: Policy, db: float) -> dict[str, int]:
    """Each quantized weight's sym width at the one step that gives the whole model a pooled weight
    SQNR of `db` (rounding noise step^2 / 12 a weight): equal slope lands near it, every width the
    recognizer's allocations chose lay within 3 below it, so a --target-sqnr menu need not measure
    the widths far from it."""
    chosen = [w for w in model.weights if policy.decide(w).quantize]
    tops, signal, count = {}, 0.0, 0
    for w in chosen:
        x = np.asarray(w.array, dtype=np.float32)
        tops[w.key] = float(np.abs(x).max()) if x.size else 0.0
        signal += float(np.square(x, dtype=np.float64).sum())
        count += x.size
    if signal <= 0 or count == 0:
        return {}
    step = math.sqrt(12 * signal / count / 10 ** (db / 10))
    return {k: max(1, math.ceil(math.log2(2 * math.ceil(top / step) + 1))) for k, top in tops.items()}


def _menu_options(w: Weight, names: tuple[str, ...], coded: str | None, half: bool,
                  near: int | None = None, widest: int = WIDE_BITS) -> tuple[float, list[Option]]:
    """(signal, options) of one weight's menu under each of `names`: what a worker sends back."""
    got = []
    for scheme in names:
        spec = get_quantizer(scheme).spec()
        top = min(widest, spec.max_bits) if spec.max_bits > MAX_BITS else MAX_BITS
        low, high = max(spec.min_bits, MIN_WIDTH), top
        if near is not None:  # the window, kept inside the scheme's widths and at least NEAR_ABOVE + 1 wide
            high = max(min(top, near + NEAR_ABOVE), low + NEAR_ABOVE)
            low = max(low, min(near - NEAR_BELOW, high - NEAR_ABOVE))
        got.append(menu(w, scheme, True, range(low, high + 1), coded, half))
    m = got[0] if len(got) == 1 else merged(got)
    return m.signal, m.options


def _portable(w: Weight) -> Weight:
    """The weight with its values in hand, to send to a worker process (its loader reads the model's file)."""
    return replace(w, load=partial(_held, np.asarray(w.array)))


def _held(x: NDArray) -> NDArray:
    return x


def data_free(model: SourceModel, policy: Policy, budget_bytes: float, why: str,
              built: list[Menu] | None = None) -> tuple[Policy, list[Menu], list[Option]]:
    """The allocation that minimizes the summed relative error within `budget_bytes` of codes and parameters."""
    ms = built if built is not None else menus(model, policy)
    if not ms:
        raise OptionError("no tensor is quantized under these options: nothing to allocate")
    chosen = choose(ms, budget_bytes)
    return plan(policy, ms, chosen, why), ms, chosen


def weights_of(ms: list[Menu]) -> int:
    return sum(m.weight.size for m in ms)


@dataclass(frozen=True)
class Goal:
    """What the user asked for; exactly one size goal, or fidelity goals checked on inputs."""

    target_bpw: float | None = None
    target_size: int | None = None
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None  # points
    target_sqnr: float | None = None  # dB, pooled over the quantized weights
    objective: str | None = None  # a key of OBJECTIVES; None: see weighing
    schemes: tuple[str, ...] | None = None  # each tensor's scheme chosen among these; None: the policy's
    allow_float: bool = False  # a fidelity goal the most precise codes cannot meet may keep tensors in float
    # the share of the error a cosine goal allows (1 - min_cosine) that its search may spend on the
    # inputs it is tuned on; the rest is for other inputs (see COSINE_MARGIN)
    cosine_share: float = 1.0

    @property
    def cosine_floor(self) -> float:
        """The least cosine accepted on the inputs: min_cosine raised by the margin kept for other inputs."""
        if self.min_cosine is None:
            return -1.0  # every cosine
        return self.min_cosine + (1 - self.cosine_share) * (1 - self.min_cosine)

    @property
    def fidelity(self) -> bool:
        return self.min_cosine is not None or self.max_accuracy_drop is not None

    @property
    def any(self) -> bool:
        return self.fidelity or self.target_bpw is not None or self.target_size is not None or self.target_sqnr is not None

    @property
    def weighing(self) -> str:
        """The objective's name: as given, else DEFAULT_OBJECTIVE (pooled for --target-sqnr, pooled by
        definition; FIDELITY_OBJECTIVE for a fidelity goal)."""
        if self.objective:
            return self.objective
        return "pooled" if self.target_sqnr is not None else FIDELITY_OBJECTIVE if self.fidelity else DEFAULT_OBJECTIVE

    def check(self) -> None:
        sizes = [f for f, v in (("--target-bpw", self.target_bpw), ("--target-size", self.target_size),
                                ("--target-sqnr", self.target_sqnr)) if v is not None]
        if len(sizes) > 1:
            raise OptionError(f"give one of --target-bpw, --target-size and --target-sqnr, not {' and '.join(sizes)}")
        if self.fidelity and sizes:
            raise OptionError(f"a fidelity goal (--min-cosine, --max-accuracy-drop) finds its own size: drop {sizes[0]}")
        for scheme in self.schemes or ():
            get_quantizer(scheme)  # an unknown name is an OptionError
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise OptionError(f"--objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")
        if self.objective is not None and not (sizes and sizes[0] != "--target-sqnr"):
            raise OptionError("--objective weighs tensors for --target-bpw or --target-size "
                              "(--target-sqnr is pooled by definition; a fidelity goal is measured)")
        if self.target_bpw is not None and not 0 < self.target_bpw <= 64:
            raise OptionError(f"--target-bpw must lie in (0, 64], not {self.target_bpw}")
        if self.target_sqnr is not None and not 0 < self.target_sqnr <= MAX_SQNR_DB:
            raise OptionError(f"--target-sqnr must lie in (0, {MAX_SQNR_DB:g}] dB, not {self.target_sqnr}")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise OptionError(f"--min-cosine must lie in [-1, 1], not {self.min_cosine}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise OptionError("--max-accuracy-drop must not be negative")
        if self.allow_float and not self.fidelity:
            raise OptionError("--allow-float is for fidelity goals (--min-cosine, --max-accuracy-drop)")

    def met(self, result: dict[str, Any]) -> tuple[bool, str]:
        """Whether an evaluation (converter.evaluate) meets the fidelity goal, and the figures, in words."""
        words, ok = [], True
        if self.min_cosine is not None:
            cos = min(o["cosine"] for o in result["outputs"])
            worst = [o["worst_input_cosine"] for o in result["outputs"] if "worst_input_cosine" in o]
            parts = [min(o["cosine"] for o in p["outputs"]) for p in result.get("parts", [])]
            ok &= min([cos, *worst, *parts]) >= self.cosine_floor
            words.append(f"min output cosine {cos:.5f}" + (f", worst single input {min(worst):.5f}" if worst else "")
                         + (f" (parts {', '.join(f'{h:.5f}' for h in parts)})" if parts else ""))
        if self.max_accuracy_drop is not None:
            c = result.get("classification") or {}
            if "accuracy_original" not in c:
                raise OptionError("--max-accuracy-drop needs a classifier and labelled inputs")
            drop = 100 * (c["accuracy_original"] - c["accuracy_quantized"])
            ok &= drop <= self.max_accuracy_drop
            words.append(f"accuracy drop {drop:.2f} points")
        return ok, ", ".join(words)


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


def bpw_budget(ms: list[Menu], bpw: float) -> float:
    return bpw * weights_of(ms) / 8


def largest(ms: list[Menu]) -> float:
    return float(sum(m.options[-1].nbytes for m in ms))


def for_size(model: SourceModel, policy: Policy, size: int, convert_to: Callable[[Policy], int],
             ms: list[Menu]) -> tuple[Policy, list[Option]]:
    """The allocation whose whole container is at most `size` bytes: the overhead (graph, metadata,
    padding) is measured on a first conversion and the budget corrected until the file fits."""
    cheapest_policy = plan(policy, ms, [m.options[0] for m in ms], "cheapest")
    floor = convert_to(cheapest_policy)
    overhead = floor - sum(m.options[0].nbytes for m in ms)
    if floor > size:
        raise BudgetError(f"--target-size {size:,} bytes is below the smallest container these tensors make "
                          f"({floor:,} bytes, of which {overhead:,} graph and metadata)")
    budget = float(size - overhead)
    for _ in range(6):
        chosen = choose(ms, budget)
        p = plan(policy, ms, chosen, f"equal slope within {size:,} bytes")
        got = convert_to(p)
        if got <= size:
            return p, chosen
        budget -= got - size  # padding and metadata grew with the choice: take it off and try again
    raise BudgetError(f"could not fit the container within --target-size {size:,} bytes")


def for_fidelity(policy: Policy, goal: Goal, ms: list[Menu], evaluate_policy: Callable[[Policy], dict[str, Any]],
                 log: Callable[[str], None] | None = None, rounds: int = 2,
                 wider: Callable[[], list[Menu]] | None = None) -> tuple[Policy, list[Option], str]:
    """The smallest allocation (bisected over the byte budget, from the starting width to the most
    precise setting) that meets a fidelity goal in the runtime; tensors that hurt most are weighted
    up and the search rerun when the goal is met only near the top; then the pooled search
    (_pooled_search) may find a smaller one. A cosine goal is searched with COSINE_MARGIN, or
    without it where the most precise setting meets the goal only so. Where the most precise
    setting misses the goal (with its margin), `wider` menus (RESCUE_BITS) replace `ms`, in place."""
    say = log or (lambda s: None)

    def most_precise() -> tuple[Policy, dict[str, Any]]:
        # the budget is bisected over each menu's convex hull: between neighbouring budgets tensors move
        # by whole hull steps, each worth its bytes, and what is found keeps a margin on other inputs
        # (over the whole front the search settles on the tune inputs' edge: Silero op15 kept 0.990
        # there and 0.982 on another draw)
        for m in ms:
            m.options = _hull(m.options)
        p = plan(policy, ms, [m.options[-1] for m in ms], "largest")
        return p, evaluate_policy(p)

    top_policy, top = most_precise()
    if goal.min_cosine is not None:
        goal = replace(goal, cosine_share=COSINE_MARGIN)
    if wider is not None:
        ok, words = goal.met(top)
        if not ok:
            say(f"every tensor at its most precise setting: {words}; measuring sym and dq up to {RESCUE_BITS} bits")
            ms[:] = wider()
            top_policy, top = most_precise()
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
            _weigh_by_damage(policy, ms, choose(ms, lo), evaluate_policy, goal, say)
            start = sum(o.nbytes for o in best[1])
    _pooled_search(ms, best[1], steps, attempt)
    if all(o.keep for o in best[1]):
        raise BudgetError(f"the goal is met only with every tensor kept in float ({best[2]}): nothing is left to quantize")
    return best


POOLED_SPAN_DB, POOLED_STEP_DB = 15.0, 0.25  # how far from the best so far the pooled search looks, and its resolution


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
                     goal: Goal, say: Callable[[str], None], top: int = 6) -> None:
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


def _stored(result: Any) -> int:
    return sum(t.stored_bytes + t.param_bytes for t in result.tensors)


def for_bpw(policy: Policy, bpw: float, convert_to: Callable[[Policy], Any], ms: list[Menu]) -> tuple[Policy, list[Option]]:
    """The allocation whose stored codes and parameters are at most `bpw` bits per quantized weight,
    checked on real conversions (entropy-coded sizes are estimates until then): the budget is
    scaled by what each conversion missed by, within the bracket of budgets known to fit and not
    to fit (an additive correction swung across the limit where the estimates are far off, as for
    zstd on codes that are not whole bytes), and the largest that fits is kept."""
    limit = bpw_budget(ms, bpw)
    floor, top = float(sum(m.options[0].nbytes for m in ms)), largest(ms)
    budget, best, fits = limit, None, None
    fit_at, miss_at = floor, math.inf  # budgets whose allocations are known to fit, and not to
    stored_of: dict[tuple[Option, ...], int] = {}  # each allocation converted once
    for _ in range(12):
        chosen = choose(ms, budget)
        repeat = tuple(chosen) in stored_of
        if not repeat:
            p = plan(policy, ms, chosen, f"equal slope within {bpw} bits per weight")
            stored_of[tuple(chosen)] = stored = _stored(convert_to(p))
            if stored <= limit and (fits is None or stored > fits):
                best, fits = (p, chosen), stored
        stored = stored_of[tuple(chosen)]
        if stored <= limit:
            fit_at = max(fit_at, budget)
        else:
            miss_at = min(miss_at, budget)
        if fits is not None and fits >= limit * (1 - 0.002):
            break
        nxt = min(budget * limit / max(stored, 1), top + limit)
        if repeat or not fit_at < nxt < miss_at or abs(nxt - budget) < 1:  # the estimate is spent: bisect
            nxt = (fit_at + miss_at) / 2 if math.isfinite(miss_at) else 2 * budget
        if miss_at - fit_at < limit * 1e-3 or nxt < floor:
            break
        budget = nxt
    if best is None:
        raise BudgetError(f"could not fit the codes within --target-bpw {bpw}")
    return best


def within_error(ms: list[Menu], allowed: float) -> list[Option]:
    """The fewest bytes whose summed squared error is at most `allowed`.

    A multiple-choice knapsack solved by dynamic programming over the error budget in DP_BUCKETS
    steps, each option's error rounded up (so the answer always fits); equal slope alone stops at
    the vertices of the summed hull, and with few tensors whose menus step coarsely those can lie
    far from the budget. Too many tensors for the table: equal slope (lam bisected), then the
    greedy steps down that still fit.
    """
    top = [m.options[-1] for m in ms]
    if sum(o.error for o in top) > allowed:
        return top
    table = _solve(ms, _bytes, _error, allowed) if allowed > 0 else None
    chosen = table if table is not None else _equal_slope_error(ms, allowed)
    # the steps down that save the most bytes per error added, while the error fits
    return _greedy(ms, chosen, -1, _bytes, _error, allowed - sum(o.error for o in chosen))


def _solve(ms: list[Menu], value: Callable[[Menu, Option], float], weight: Callable[[Menu, Option], float],
           limit: float) -> list[Option] | None:
    """_table with DP_BUCKETS steps or more (16 per menu), or None when that table would pass DP_CELLS."""
    buckets = min(max(DP_BUCKETS, 16 * len(ms)), 1 << 16)
    return _table(ms, value, weight, limit, buckets) if len(ms) * buckets <= DP_CELLS else None


def _table(ms: list[Menu], value: Callable[[Menu, Option], float], weight: Callable[[Menu, Option], float], limit: float,
           buckets: int) -> list[Option] | None:
    """A multiple-choice knapsack by dynamic programming: one option per menu, the least summed
    `value` whose summed `weight` is at most `limit`, each weight rounded up to limit / buckets (so
    the answer always fits). None when nothing fits after rounding."""
    unit = limit / buckets
    least = np.zeros(buckets + 1)  # least value of the menus so far with weight <= e * unit
    picks = np.zeros((len(ms), buckets + 1), np.uint8 if max(len(m.options) for m in ms) < 256 else np.uint16)
    for i, m in enumerate(ms):
        new = np.full(buckets + 1, np.inf)
        for k, o in enumerate(m.options):
            c = math.ceil(weight(m, o) / unit)
            if c > buckets:
                continue
            cand = np.full(buckets + 1, np.inf)
            cand[c:] = least[: buckets + 1 - c] + value(m, o)
            better = cand < new
            new[better] = cand[better]
            picks[i, better] = k
        least = new
    if not np.isfinite(least[-1]):
        return None
    chosen: list[Option] = []
    e = buckets
    for i in range(len(ms) - 1, -1, -1):
        o = ms[i].options[int(picks[i, e])]
        chosen.append(o)
        e -= math.ceil(weight(ms[i], o) / unit)
    return chosen[::-1]


def _equal_slope_error(ms: list[Menu], allowed: float) -> list[Option]:
    def pick(lam: float) -> list[Option]:
        return [m.options[int(np.argmin([o.error + lam * o.nbytes for o in m.options]))] for m in ms]

    lo, hi = 0.0, 1.0  # lo meets the error budget; grow hi until it does not
    while sum(o.error for o in pick(hi)) <= allowed and hi < 1e30:
        lo, hi = hi, hi * 4
    for _ in range(100):
        mid = (lo + hi) / 2
        if sum(o.error for o in pick(mid)) <= allowed:
            lo = mid
        else:
            hi = mid
        if hi - lo <= hi * 1e-9:
            break
    return pick(lo)


def for_sqnr(policy: Policy, db: float, convert_to: Callable[[Policy], Any], ms: list[Menu]) -> tuple[Policy, list[Option]]:
    """The fewest stored bytes whose pooled weight SQNR is at least `db`, checked on real
    conversions: the estimated error budget is corrected by what each one missed by.

    Raises:
        BudgetError: even every tensor at its most precise setting falls short.
    """
    signal = sum(m.signal for m in ms)
    allowed = target = signal / 10 ** (db / 10)
    best: tuple[Policy, list[Option]] | None = None
    best_bytes = math.inf
    tried: set[tuple[Option, ...]] = set()
    for _ in range(6):
        chosen = within_error(ms, target)
        if tuple(chosen) in tried:
            break
        tried.add(tuple(chosen))
        p = plan(policy, ms, chosen, f"fewest bytes at a pooled weight SQNR of {db:g} dB")
        result = convert_to(p)
        noise = sum(t.noise for t in result.tensors)
        got = 10 * math.log10(signal / noise) if noise > 0 else math.inf
        if got >= db and _stored(result) < best_bytes:
            best, best_bytes = (p, chosen), _stored(result)
        if got < db and all(o is m.options[-1] for o, m in zip(chosen, ms)):
            raise BudgetError(f"--target-sqnr {db:g} dB is out of reach: every tensor at its most precise setting "
                              f"gives {got:.2f} dB")
        if noise <= 0 or (best is not None and got - db < 0.05):
            break
        # the estimated errors were off by this factor: aim that much closer
        target = allowed * sum(o.error for o in chosen) / noise
    if best is None:
        raise BudgetError(f"could not reach --target-sqnr {db:g} dB")
    return best


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


FLOAT_FLOOR = 2.0 ** -20  # relative noise of the float-rounding probe: about 8-16 units in the last place of a float32


def float_floor(src: SourceModel, ms: list[Menu], model_path: Any, inputs: Any, reference: Any, parts: Any, workdir: Any) -> dict[str, Any]:
    """An evaluation of the model with the menus' tensors times 1 + FLOAT_FLOOR x N(0, 1) noise
    (seeded): where even that misses a fidelity goal, the outputs on these inputs are at the float
    floor (a text detector's scores on noise: 16,359 of 16,384 exactly 0, the rest a few units of
    2^-25) and no quantizer can keep them; the goal is not what is out of reach. Weights stored as
    float16 cannot carry such a move: for them the probe is the model itself and finds nothing."""
    from qpack.converter.evaluate import compare
    from qpack.formats.registry import restore_model

    rng = np.random.default_rng(0)

    def moved(w: Weight) -> NDArray:
        a = w.array
        return (a * (1 + FLOAT_FLOOR * rng.standard_normal(a.shape, dtype=np.float32))).astype(a.dtype)

    out = workdir / f"float-floor.{src.format}"
    written = [out]
    try:
        written = restore_model(src.format, src.skeleton({m.weight.key for m in ms}),
                                {m.weight.key: partial(moved, m.weight) for m in ms}, out)
        return compare(model_path, out, inputs, reference=reference, parts=parts)
    finally:
        for f in written:
            f.unlink(missing_ok=True)


def allocate(src: SourceModel, policy: Policy, goal: Goal, codec: Any, workdir: Any, model_path: Any = None,
             inputs: Any = None, log: Callable[[str], None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> Allocation:
    """The policy that meets `goal` (tensors fixed to their chosen settings), and a summary for reports.

    `policy.bits` is where a fidelity search starts; every option uses `policy.scheme`, or one of
    `goal.schemes`.
    """
    from pathlib import Path

    from qpack.converter.convert import Reuse, convert
    from qpack.formats.qpk import RAW

    goal.check()
    if policy.bits_for:
        raise OptionError("--bits-for fixes widths by hand: leave it out when qpack allocates them")
    trial = Path(workdir) / "trial.qpk"
    near = step_widths(src, policy, goal.target_sqnr) if goal.target_sqnr is not None else None
    coded = None if codec.id == RAW.id else codec.name
    ms = menus(src, policy, progress, coded=coded, schemes=goal.schemes, near=near)
    if not ms:
        raise OptionError("no tensor is quantized under these options: nothing to allocate")

    last: list[Any] = [None, None]  # the policy last converted, and its result
    reuse = Reuse()  # trials differ in a few tensors: the others are carried over
    # a fidelity goal's trials are judged by their decoded weights and priced by the menus: their codes
    # need not be entropy-coded (the final conversion codes them once); size goals price real streams
    trial_codec = RAW if goal.fidelity else codec

    def convert_to(p: Policy) -> Any:
        last[:] = [p, convert(src, p, trial, codec=trial_codec, reuse=reuse)]
        return last[1]

    objective = goal.weighing

    def weighed(built: list[Menu]) -> list[Menu]:
        for m in built:
            m.importance = OBJECTIVES[objective].importance(m, built)
        return built

    weighed(ms)
    summary: dict[str, Any] = {"proxy": OBJECTIVES[objective].help, "objective": objective,
                               "schemes": list(goal.schemes or (policy.scheme,))}
    if goal.target_sqnr is not None:
        p, chosen = for_sqnr(policy, goal.target_sqnr, convert_to, ms)
        summary["goal"] = f"--target-sqnr {goal.target_sqnr}"
    elif goal.target_bpw is not None:
        p, chosen = for_bpw(policy, goal.target_bpw, convert_to, ms)
        summary["goal"] = f"--target-bpw {goal.target_bpw}"
    elif goal.target_size is not None:
        p, chosen = for_size(src, policy, goal.target_size, lambda q: convert_to(q).size, ms)
        summary["goal"] = f"--target-size {goal.target_size}"
    else:
        from qpack.converter.evaluate import evaluate, run_all
        from qpack.converter.runtime import open_runner

        if inputs is None:
            raise OptionError("a fidelity goal needs inputs: --inputs, --images or --dataset")
        original = open_runner(model_path)
        reference = run_all(original, inputs)
        # a cosine goal holds on subsets of the inputs too (goal_subsets): met on the whole alone, an
        # allocation tuned to the edge falls below it on other inputs of the same kind
        parts = [(h, run_all(original, h)) for h in goal_subsets(inputs)] if goal.min_cosine is not None else []
        checks: list[str] = []

        def evaluate_policy(q: Policy) -> dict[str, Any]:
            convert_to(q)
            return evaluate(model_path, inputs, qpk=trial, reference=reference, parts=parts)

        def note(line: str) -> None:
            checks.append(line)
            if log:
                log(line)

        if goal.min_cosine is not None and inputs.count < FEW_INPUTS:
            note(f"only {inputs.count} inputs: the cosine goal holds on them and their subsets, and another draw may land "
                 f"lower; {FEW_INPUTS} or more stand for other inputs better")
        def wider() -> list[Menu]:
            return weighed(menus(src, policy, progress, coded=coded, schemes=goal.schemes, widest=RESCUE_BITS))

        widens = any(get_quantizer(s).spec().max_bits > WIDE_BITS for s in goal.schemes or (policy.scheme,))
        try:
            p, chosen, words = for_fidelity(policy, goal, ms, evaluate_policy, note, wider=wider if widens else None)
        except BudgetError as e:
            floor = replace(goal, cosine_share=1.0).met(float_floor(src, ms, model_path, inputs, reference, parts, Path(workdir)))
            if floor[0]:
                raise
            raise BudgetError(f"on these inputs the outputs are at the float floor, where no quantizer can keep them: the "
                              f"float weights, each moved by random noise of {FLOAT_FLOOR:.0e} of its value, give {floor[1]}; "
                              f"use inputs the model responds to ({e})") from e
        summary.update(goal=" and ".join(f"{k} {v}" for k, v in (("--min-cosine", goal.min_cosine),
                                                                   ("--max-accuracy-drop", goal.max_accuracy_drop)) if v is not None),
                       met=words, checks=checks, inputs=inputs.description)
    summary["candidates"] = sum(len(m.options) for m in ms)  # the menus searched (widened ones included)
    summary["bits_per_weight_planned"] = round(8 * sum(o.nbytes for o in chosen) / weights_of(ms), 4)
    if any(o.keep for o in chosen):
        summary["kept_in_float"] = [m.weight.name for m, o in zip(ms, chosen) if o.keep]
    return Allocation(p, summary, last[1] if last[0] is p and trial_codec.id == codec.id else None, reuse)
