"""A menu per tensor: its settings (width, grouping, clip, scheme), each with its measured bytes and error.

Every quantized tensor gets a menu of settings, each with its cost (code and parameter bytes) and
error (squared error, estimated on a sample of whole groups, see allocate.sample). Where a codec
stores codes in about their entropy (Codec.price) a setting's code bytes are its estimate; else the
codes' packed size. A menu keeps its Pareto front: what the knapsack chooses from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from qpack.converter.allocate.pool import each_weight
from qpack.converter.allocate.sample import LOW_BITS_CLIP, View, group_tops, half_fits, sample_error
from qpack.converter.export.native import Native
from qpack.converter.policy import Decision, Policy
from qpack.converter.quant import QUANTIZERS, get_quantizer
from qpack.converter.quant.base import WIDENED
from qpack.converter.quant.stream import check_finite
from qpack.formats.errors import OptionError
from qpack.formats.model import SourceModel, Weight
from qpack.formats.qpk import RAW, Codec, Grouping, packed_size

MAX_BITS = 8
# schemes whose codes go past a byte (sym, dq) are measured up to this: a full range at a step finer
# than 255 levels allow (outliers kept, the bulk fine), what entropy-coded high-fidelity goals want
# and what rescues a model 8 bits cannot carry
WIDE_BITS = 12
# one-bit codes keep two levels per group: the allocation never needs them to reach a budget it
# can meet at all, and the summed relative error underrates how they break a network
MIN_WIDTH = 2
BLOCKS = (32, 128)
MENU_RDO, MENU_RDO_BITS = 0.1, 6  # the rate-aware rounding entropy-coded menus offer, and the widest width they offer it at
MENU_RDO_CLIPS = ("minmax", *WIDENED)
MENU_TRELLIS = 0.4  # the lambda trellis schemes' menus search with (squared scale units per bit): at equal SQNR it beat 0.1 by 1-2%
NEAR_BELOW, NEAR_ABOVE = 4, 1  # the widths a menu keeps around its tensor's `near` width (see menus)
AUTO_SCHEMES = ("asym", "sym")  # what a goal chooses each tensor's scheme from when none is given
KEPT_REASON = "kept in float: the fidelity goal needs it (--allow-float)"


@dataclass(frozen=True)
class Option:
    """One setting of one tensor, with what it costs and what it loses."""

    bits: int
    axis: int | None
    block: int | None
    clip: str
    nbytes: int  # codes (packed, or as the codec is expected to store them) + parameters
    error: float  # squared error of the whole tensor (estimated)
    scheme: str
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
    importance: float = 1.0  # multiplies the tensor's relative error (see allocate.objectives)

    def cost(self, o: Option) -> float:
        return self.importance * o.error / max(self.signal, 1e-30)


def front(opts: list[Option]) -> list[Option]:
    """The options nothing cheaper beats: strictly less error than everything cheaper, cheapest first.
    Menus keep the whole front, not just its convex hull: the knapsack tables choose exactly among
    what they are given, and a point inside the hull can be what fills a budget."""
    out: list[Option] = []
    for o in sorted(opts, key=lambda o: (o.nbytes, o.error)):
        if not out or o.error < out[-1].error:
            out.append(o)
    return out


def hull(opts: list[Option]) -> list[Option]:
    """The options no mix of others beats: the lower convex hull of (bytes, error), cheapest first."""
    out: list[Option] = []
    for o in front(opts):
        while len(out) >= 2:
            a, b = out[-2], out[-1]
            # drop b if it lies on or above the segment a -> o
            if (b.error - a.error) * (o.nbytes - a.nbytes) >= (o.error - a.error) * (b.nbytes - a.nbytes):
                out.pop()
            else:
                break
        out.append(o)
    return out


def merged(ms: list[Menu]) -> Menu:
    """One tensor's menus under several schemes as one: the front of all their options."""
    return Menu(ms[0].weight, ms[0].signal, front([o for m in ms for o in m.options]), ms[0].importance)


def plan(policy: Policy, menus: list[Menu], options: list[Option], why: str) -> Policy:
    """The policy with each menu's tensor fixed to its chosen option."""
    fixed = tuple((m.weight.key, o.decision(why)) for m, o in zip(menus, options))
    return replace(policy, plan=fixed)


def weights_of(ms: list[Menu]) -> int:
    return sum(m.weight.size for m in ms)


def bpw_budget(ms: list[Menu], bpw: float) -> float:
    return bpw * weights_of(ms) / 8


def largest(ms: list[Menu]) -> float:
    return float(sum(m.options[-1].nbytes for m in ms))


def groupings(w: Weight) -> list[tuple[int | None, int | None]]:
    """(axis, block) of the groupings a menu measures: per tensor, per channel, and blocks along the
    reduction axis where it holds two of them."""
    out: list[tuple[int | None, int | None]] = [(None, None)]
    if w.axis is not None and len(w.shape) > 1:
        out.append((w.axis, None))
    if w.reduction is not None:
        n = w.shape[w.reduction]
        out += [(w.reduction, b) for b in BLOCKS if n >= 2 * b]
    return out


def menu(w: Weight, scheme: str, widths: range | list[int] = range(MIN_WIDTH, MAX_BITS + 1), codec: Codec | None = None,
         half: bool = True, native: Native | None = None) -> Menu:
    """The options of one weight under `scheme`, pruned to their Pareto front.

    `codec`: what will store the codes (None: packed); where it stores them in about their entropy
    (Codec.sized_by_entropy), an option's code bytes are its price from the codes' order-0 entropy
    instead of their packed size. `native`: an export target's; only the groupings it takes are
    measured, each option priced in the bytes it stores (the widths are the caller's to choose).
    """
    q = get_quantizer(scheme)
    spec = q.spec()
    codec = codec or RAW
    x = np.asarray(w.array, dtype=np.float32)
    check_finite(x, w.name)  # as convert refuses it: before any option is measured on it
    signal = float(np.square(x, dtype=np.float64).sum())  # not np.dot: a BLAS call leaves its threads spinning on the other cores
    opts = []
    for axis, block in groupings(w):
        g = Grouping(axis, block)
        if (block is not None and not spec.blocks) or (
                native is not None and not native.takes_grouping(g, w.role.value, shape=w.shape, sparse=w.sparse)):
            continue
        v = View(x, g)
        # a scale per channel or block is stored as float16 (unless `half` is off): the codes are chosen
        # against the rounded scale, so the error hardly moves, and small channels (a 3x3 depthwise
        # kernel) pay half; not where a scale could fall below float16's normal range and lose digits.
        # A target that stores block scales in float16 only (TFLite) gets them so, or no blocks
        fixed = native.block_scales(g) if native is not None else None
        tops = group_tops(x, g) if (half or fixed) and axis is not None else None
        for bits in widths:
            if not spec.min_bits <= bits <= spec.max_bits or (bits > MAX_BITS and block is not None):
                continue
            if fixed and native is not None and not native.takes_grouping(g, w.role.value, native.width(spec, bits), w.shape, w.sparse):
                continue
            half_here = tops is not None and half_fits(tops, q.levels(bits), bits)
            if fixed and not half_here:
                continue
            dtypes = {"scale": "<f2"} if half_here else None
            # priced by entropy, a full range can cost fewer bytes than a clipped one: its codes crowd the middle
            priced = codec.sized_by_entropy(bits)
            clips = ("mse", "minmax") if priced and bits <= LOW_BITS_CLIP else ("mse",) if bits <= LOW_BITS_CLIP else ("minmax",)
            variants = [(c, 0.0) for c in clips]
            if q.trellis:  # its own rounding is rate-aware; steps half a bit apart, the mix of tensors fills in
                variants = [("minmax", MENU_TRELLIS), ("loose2", MENU_TRELLIS)]
            elif codec.entropy_coded and block is None and q.entropy_steps:
                # a coder that models the codes' frequencies prices them by those: steps between the
                # widths', and rounding that gives up a little error for fewer bits (at the low rates where it pays)
                variants += [(c, 0.0) for c in WIDENED]
                if bits <= MENU_RDO_BITS:
                    variants += [(c, MENU_RDO) for c in MENU_RDO_CLIPS]
            for clip, lam in variants:
                err, pbytes, entropy, span = sample_error(q, v, bits, clip, dtypes, lam)
                stored = codec.price(w.size, bits, entropy, span)
                code_bytes = packed_size(w.size, bits) if stored is None else stored
                nbytes = code_bytes + pbytes
                if native is not None:
                    nbytes = native.price(scheme, bits, w.shape, g, code_bytes, pbytes, codec.name, w.role.value)
                opts.append(Option(bits, axis, block, clip, nbytes, err, scheme, rdo=lam, half=half_here))
    return Menu(w, signal, front(opts))


def menus(model: SourceModel, policy: Policy, progress: Callable[[int, int], None] | None = None,
          codec: Codec | None = None, schemes: tuple[str, ...] | None = None,
          near: dict[str, int] | None = None, widest: int = WIDE_BITS) -> list[Menu]:
    """A menu for each weight the policy quantizes: widths 2 to 8 (`widest` for schemes that go past
    a byte) under the policy's scheme, or under each of `schemes` (the tensor then takes whichever
    scheme its chosen option has; with an entropy-coding codec, the schemes offered for it too,
    Quantizer.coded_choice); with `near` (weight key -> width), only the widths NEAR_BELOW below to
    NEAR_ABOVE above it. A policy made for an export target (`--for`) gets only the settings the
    target runs natively, priced in its bytes. Measured in worker processes on large models (allocate.pool)."""
    from qpack.converter.deploy import native_of

    native = native_of(policy)
    chosen = [w for w in model.weights if policy.decide(w).quantize]
    names = schemes or (policy.scheme,)
    if schemes is not None and codec is not None and codec.entropy_coded:
        names = (*names, *(n for n, q in QUANTIZERS.items() if q.coded_choice and n not in names))
    if native is not None:
        names = tuple(n for n in names if native.takes_scheme(n))
    half = policy.param_dtype != "fp32" and (native is None or native.half_scales)
    near = near or {}

    def job(w: Weight) -> Callable[[], tuple[float, list[Option]]]:
        return partial(_menu_options, w, names, codec, half, near.get(w.key), widest, native)

    def warm() -> None:
        for n in names:
            get_quantizer(n).warm()

    got = each_weight(chosen, job, progress, warm)
    out = [Menu(w, signal, options) for w, (signal, options) in zip(chosen, got)]
    for m in out:
        if not m.options:
            raise OptionError(f"tensor '{m.weight.name}': no setting of {', '.join(names) or 'any scheme'} runs natively in "
                              f"--for {policy.target}: keep it (--keep) or choose another target")
    return out


def _menu_options(w: Weight, names: tuple[str, ...], codec: Codec | None, half: bool,
                  near: int | None = None, widest: int = WIDE_BITS, native: Native | None = None) -> tuple[float, list[Option]]:
    """(signal, options) of one weight's menu under each of `names`: what a worker sends back."""
    got = []
    for scheme in names:
        if native is not None and not native.takes_scheme(scheme, w.sparse):
            continue
        spec = get_quantizer(scheme).spec()
        top = min(widest, spec.max_bits) if spec.max_bits > MAX_BITS else MAX_BITS
        low, high = max(spec.min_bits, MIN_WIDTH), top
        widths = list(range(low, high + 1))
        if native is not None:  # only the widths the target stores as they are
            widths = [b for b in widths if native.width(spec, b) in native.widths_for(w.role.value, w.sparse)]
        if near is not None:  # the window, kept inside the scheme's widths and at least NEAR_ABOVE + 1 wide
            high = max(min(top, near + NEAR_ABOVE), low + NEAR_ABOVE)
            low = max(low, min(near - NEAR_BELOW, high - NEAR_ABOVE))
            if native is None:
                widths = list(range(low, high + 1))
            else:  # a target's widths can all lie outside the window: then the nearest on each side too
                window = [b for b in widths if low <= b <= high]
                below, above = [b for b in widths if b < low], [b for b in widths if b > high]
                widths = window if len(window) >= 2 else sorted({*window, *below[-1:], *above[:1]})
        if widths:
            got.append(menu(w, scheme, widths, codec, half, native))
    if not got:
        return 0.0, []
    m = got[0] if len(got) == 1 else merged(got)
    return m.signal, m.options
