"""One option per menu: the least summed value whose summed weight fits a limit (a multiple-choice
knapsack), in both directions the allocation asks: the least weighted error within a byte budget
(`choose`), and the fewest bytes within an error budget (`within_error`).

The knapsack is solved by dynamic programming over the limit in DP_BUCKETS steps, each option's
weight rounded up (so the answer always fits); equal slope alone stops at the vertices of the
summed hull, and with few tensors whose menus step coarsely those can lie far from the limit. With
too many tensors for the table, by equal slope: for a multiplier mu each tensor takes the option
minimizing value + mu * weight, and mu is bisected to the least that fits. Either way, what the
limit leaves over then goes to the best remaining moves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qpack.converter.allocate.options import Menu, Option
from qpack.formats.errors import BudgetError

DP_BUCKETS, DP_CELLS = 4096, 1 << 26  # steps of the knapsack table over its limit, and the table's size limit

Figure = Callable[[Menu, Option], float]


@dataclass(frozen=True)
class Knapsack:
    """Which figure of an option is minimized (`value`) and which is bounded (`weight`); `up`: the
    step along a menu (cheapest first) that adds weight, +1 where the weight is bytes, -1 where it is error."""

    value: Figure
    weight: Figure
    up: int

    def lightest(self, ms: list[Menu]) -> list[Option]:
        return [m.options[0 if self.up > 0 else -1] for m in ms]

    def solve(self, ms: list[Menu], limit: float) -> list[Option]:
        """The least summed value within `limit` of summed weight; the lightest options must fit it."""
        chosen = self._table(ms, limit) if limit > 0 else None
        if chosen is None:
            chosen = self._equal_slope(ms, limit)
        return self._greedy(ms, chosen, limit - sum(self.weight(m, o) for m, o in zip(ms, chosen)))

    def _table(self, ms: list[Menu], limit: float) -> list[Option] | None:
        """By dynamic programming with DP_BUCKETS steps or more (16 per menu), each weight rounded up
        to limit / steps (so the answer always fits); None when the table would pass DP_CELLS, or
        when nothing fits after rounding."""
        buckets = min(max(DP_BUCKETS, 16 * len(ms)), 1 << 16)
        if len(ms) * buckets > DP_CELLS:
            return None
        unit = limit / buckets
        least = np.zeros(buckets + 1)  # least value of the menus so far with weight <= e * unit
        picks = np.zeros((len(ms), buckets + 1), np.uint8 if max(len(m.options) for m in ms) < 256 else np.uint16)
        for i, m in enumerate(ms):
            new = np.full(buckets + 1, np.inf)
            for k, o in enumerate(m.options):
                c = math.ceil(self.weight(m, o) / unit)
                if c > buckets:
                    continue
                cand = np.full(buckets + 1, np.inf)
                cand[c:] = least[: buckets + 1 - c] + self.value(m, o)
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
            e -= math.ceil(self.weight(ms[i], o) / unit)
        return chosen[::-1]

    def _equal_slope(self, ms: list[Menu], limit: float) -> list[Option]:
        """Per menu the option minimizing value + mu * weight, mu the least (within 1e-9) that fits:
        the vertex of the summed hull next to the limit. mu spans many decades (bytes per unit of
        error and the reverse): bisected geometrically."""
        def pick(mu: float) -> list[Option]:
            return [m.options[int(np.argmin([self.value(m, o) + mu * self.weight(m, o) for o in m.options]))] for m in ms]

        def fits(mu: float) -> bool:
            return sum(self.weight(m, o) for m, o in zip(ms, pick(mu))) <= limit

        lo, hi = 0.0, 1.0
        while not fits(hi):
            hi *= 4
            if hi > 1e30:
                break
        if fits(lo):
            return pick(lo)
        for _ in range(80):
            mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e6 if hi > 1e-300 else 0.0
            if fits(mid):
                hi = mid
            else:
                lo = mid
            if hi - lo <= hi * 1e-9:
                break
        return pick(hi)

    def _greedy(self, ms: list[Menu], chosen: list[Option], slack: float) -> list[Option]:
        """Move tensors one option along their menus, each time the move with the most value saved
        per weight added, while the added weight fits in `slack`."""
        while True:
            best, rate = None, 0.0
            for i, (m, o) in enumerate(zip(ms, chosen)):
                k = m.options.index(o) + self.up
                if 0 <= k < len(m.options):
                    added = self.weight(m, m.options[k]) - self.weight(m, o)
                    r = (self.value(m, o) - self.value(m, m.options[k])) / max(added, 1e-300)
                    if added <= slack and r > rate:
                        best, rate = i, r
            if best is None:
                return chosen
            m = ms[best]
            nxt = m.options[m.options.index(chosen[best]) + self.up]
            slack -= self.weight(m, nxt) - self.weight(m, chosen[best])
            chosen[best] = nxt


def _bytes(m: Menu, o: Option) -> float:
    return o.nbytes


def _error(m: Menu, o: Option) -> float:
    return o.error


WITHIN_BYTES = Knapsack(Menu.cost, _bytes, +1)  # the least weighted error (Menu.cost) within a byte budget
WITHIN_ERROR = Knapsack(_bytes, _error, -1)  # the fewest bytes within a summed squared error


def choose(menus: list[Menu], budget: float) -> list[Option]:
    """The least summed cost within `budget` bytes.

    Raises:
        BudgetError: even the cheapest option of every tensor exceeds the budget.
    """
    cheapest = sum(m.options[0].nbytes for m in menus)
    if cheapest > budget:
        n = sum(m.weight.size for m in menus)
        raise BudgetError(f"the goal leaves {budget:,.0f} bytes for weights; the fewest they can take is {cheapest:,} "
                          f"({8 * cheapest / max(n, 1):.3f} bits per weight)")
    return WITHIN_BYTES.solve(menus, budget)


def within_error(ms: list[Menu], allowed: float) -> list[Option]:
    """The fewest bytes whose summed squared error is at most `allowed`; every tensor's most precise
    option where even those exceed it."""
    top = WITHIN_ERROR.lightest(ms)
    if sum(o.error for o in top) > allowed:
        return top
    return WITHIN_ERROR.solve(ms, allowed)
