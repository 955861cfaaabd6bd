"""Shift-and-add plans for fixed weights: multiple-constant multiplication and adder trees.

A layer whose weights are fixed at build time needs no multiplier: ``w * x``
for a constant ``w`` is a few shifted additions of ``x``. :class:`AdderGraph`
plans them for a whole ``[M, fan_in]`` weight matrix whose inputs all arrive
at once (a receptive field per beat):

1. **Shared products** (multiple-constant multiplication). For each input
   ``x_t``, every odd *fundamental* ``f`` with ``w = +-f * 2**s`` for a weight
   ``w`` of column ``t`` is made once, from ``x_t`` and the fundamentals made
   before it, one adder each where one adder can (``f = +-(a << i) +- b``, or
   ``(a +- b) >> k``): the weights of every kernel that reads ``x_t`` share
   them. A target two adders away gets the intermediate that serves the most
   targets; the rest follow their canonical signed-digit form.
2. **Adder trees.** Each kernel's terms ``+-(f * x_t) << s`` are summed by a
   tree that pairs the two earliest terms first, so a kernel's depth is the
   least its terms allow; signs are carried to the root, shifts factored out.

Every node's value range is exact (each tap appears once per kernel), so
every adder is exactly as wide as its values need. :meth:`AdderGraph.lut_estimate`
counts LUTs from those widths: one LUT per sum bit (the carry chains of iCE40
and ECP5 add one bit per LUT). :class:`cosparse.hw.logic.LogicEngine` turns
a plan into registers, one adder per pipeline stage.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

__all__ = ["Node", "AdderGraph", "csd_digits", "odd_part"]

#: Largest intermediate fundamental the planner makes (int8 weights' odd parts are
#: at most 127; an intermediate may be up to this).
MAX_FUNDAMENTAL = 1 << 10


def odd_part(v: int) -> tuple[int, int]:
    """``(f, s)`` with ``v == f << s`` and ``f`` odd, for ``v > 0``."""
    s = (v & -v).bit_length() - 1
    return v >> s, s


def csd_digits(v: int) -> int:
    """Non-zero digits of ``v``'s canonical signed-digit form (``v >= 0``)."""
    n = 0
    while v:
        if v & 1:
            v -= 2 - (v & 3)  # digit +1 if v % 4 == 1, else -1
            n += 1
        v >>= 1
    return n


@dataclass(frozen=True)
class Node:
    """One value of the plan: an input, or ``(sa * (a << ia) + sb * (b << ib)) >> shr``.

    ``a``/``b`` are node numbers (``-1`` for an input), ``sa``/``sb`` are
    ``+1``/``-1`` (at most one ``-1``), and the sum is an exact multiple of
    ``2**shr``. ``level`` is the adder depth (inputs 0); ``lo``/``hi`` the
    value's exact range.
    """

    a: int
    ia: int
    sa: int
    b: int
    ib: int
    sb: int
    shr: int
    level: int
    lo: int
    hi: int
    tap: int = -1

    @property
    def bits(self) -> int:
        """Signed width that holds ``lo .. hi``."""
        return max(int(self.lo).bit_length(), int(self.hi).bit_length()) + 1


@dataclass(frozen=True)
class Root:
    """A kernel's sum: ``sign * (node << shift)``, or 0 (``node == -1``)."""

    node: int
    shift: int
    sign: int


class AdderGraph:
    """The shift-and-add plan of ``y = W x`` for a fixed integer matrix.

    Parameters
    ----------
    weights : array of int, shape (M, fan_in)
        The weights (any integers; int8 in practice).
    in_range : (int, int)
        The inputs' value range (int8: ``(-128, 127)``).

    Attributes
    ----------
    nodes : list of Node
        Inputs first (node ``t`` is input ``t``), then adders in an order where
        each adder's operands come before it.
    roots : list of Root
        Each kernel's output.
    depth : int
        Adder levels of the deepest kernel.
    """

    def __init__(self, weights: np.ndarray, in_range: tuple[int, int] = (-128, 127)):
        w = np.asarray(weights)
        if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1 or not np.issubdtype(w.dtype, np.integer):
            raise ValueError(f"weights must be a non-empty 2-D integer array, got "
                             f"{getattr(w, 'shape', None)} {getattr(w, 'dtype', None)}")
        lo, hi = in_range
        if not (isinstance(lo, int) and isinstance(hi, int) and lo <= 0 <= hi):
            raise ValueError(f"in_range must be integers lo <= 0 <= hi, got {in_range!r}")
        self.weights = w.astype(np.int64)
        self.in_range = (lo, hi)
        self.nodes: list[Node] = [Node(-1, 0, 1, -1, 0, 1, 0, 0, lo, hi, tap=t)
                                  for t in range(w.shape[1])]
        # products[t][f]: node holding f * x_t
        self.products: list[dict[int, int]] = [self._multiples(t) for t in range(w.shape[1])]
        self.roots = [self._tree(row) for row in self.weights]
        self.depth = max((self.nodes[r.node].level for r in self.roots if r.node >= 0), default=0)

    # -- shared products ---------------------------------------------------------------

    def _adder(self, a: int, ia: int, sa: int, b: int, ib: int, sb: int, shr: int,
               lo: int, hi: int, tap: int = -1) -> int:
        level = max(self.nodes[a].level, self.nodes[b].level) + 1
        self.nodes.append(Node(a, ia, sa, b, ib, sb, shr, level, lo, hi, tap))
        return len(self.nodes) - 1

    def _multiples(self, t: int) -> dict[int, int]:
        """Nodes for the odd fundamentals of column ``t``'s weights times ``x_t``."""
        col = self.weights[:, t]
        targets = {odd_part(int(abs(v)))[0] for v in col if v != 0} - {1}
        made: dict[int, int] = {1: t}
        reach: dict[int, tuple] = {}  # fundamental -> (a, ia, sa, b, ib, sb, shr), one adder from made
        lo, hi = self.in_range

        def successors(f: int) -> None:
            for g in list(made):
                for a, b in ((f, g), (g, f)):
                    for i in range(1, MAX_FUNDAMENTAL.bit_length()):
                        if (a << i) > 2 * MAX_FUNDAMENTAL:
                            break
                        for v, op in (((a << i) + b, (a, i, 1, b, 0, 1, 0)),
                                      ((a << i) - b, (a, i, 1, b, 0, -1, 0)),
                                      (b - (a << i), (b, 0, 1, a, i, -1, 0))):
                            if 0 < v <= MAX_FUNDAMENTAL and v not in made and v not in reach:
                                reach[v] = op
                for v, sb in ((f + g, 1), (abs(f - g), -1)):
                    if v == 0:
                        continue
                    odd, k = odd_part(v)
                    a, b = (f, g) if sb == 1 or f > g else (g, f)
                    if odd <= MAX_FUNDAMENTAL and odd not in made and odd not in reach:
                        reach[odd] = (a, 0, 1, b, 0, sb, k)

        def make(v: int) -> None:
            a, ia, sa, b, ib, sb, shr = reach.pop(v)
            made[v] = self._adder(made[a], ia, sa, made[b], ib, sb, shr,
                                  *sorted((v * lo, v * hi)), tap=t)
            successors(v)

        successors(1)
        while targets - made.keys():
            ready = sorted(v for v in targets - made.keys() if v in reach)
            if ready:
                for v in ready:
                    if v in reach:
                        make(v)
                continue
            best = self._bridge(targets - made.keys(), made, reach)
            if best is not None:
                make(best)
                continue
            # No target within two adders: the signed-digit chain of the cheapest.
            v = min(targets - made.keys(), key=lambda f: (csd_digits(f), f))
            part = self._csd_prefix(v, made)
            if part not in reach:  # pragma: no cover - a CSD prefix is one adder from 1
                raise AssertionError(f"no adder reaches {part}")
            make(part)
        return made

    @staticmethod
    def _bridge(todo: set[int], made: dict, reach: dict) -> int | None:
        """The one-adder fundamental that puts the most remaining targets one adder away."""
        votes: dict[int, int] = {}
        for t in todo:
            seen = set()
            for r in made:
                for i in range(0, MAX_FUNDAMENTAL.bit_length()):
                    for j in range(0, MAX_FUNDAMENTAL.bit_length()):
                        if (r << i) > 2 * MAX_FUNDAMENTAL or (t << j) > 2 * MAX_FUNDAMENTAL:
                            break
                        if i and j:
                            continue  # one of the two shifts is zero for odd operands
                        for v in ((t << j) - (r << i), (r << i) - (t << j), (t << j) + (r << i)):
                            if v > 0:
                                s = odd_part(v)[0]
                                if s in reach and s not in seen:
                                    seen.add(s)
                                    votes[s] = votes.get(s, 0) + 1
        if not votes:
            return None
        return max(votes, key=lambda s: (votes[s], -s))

    @staticmethod
    def _csd_prefix(v: int, made: dict) -> int:
        """The shortest prefix of ``v``'s signed digits (lowest first) not yet made.

        Its odd part is one adder from the previous prefix's and ``1``."""
        digits, k, x = [], 0, v
        while x:
            if x & 1:
                d = 2 - (x & 3)
                digits.append((d, k))
                x -= d
            x >>= 1
            k += 1
        total = 0
        for d, k in digits:
            total += d << k
            f = odd_part(abs(total))[0]
            if f not in made:
                return f
        raise AssertionError(f"{v} is made")  # pragma: no cover - only called for targets

    # -- adder trees ---------------------------------------------------------------------

    def _tree(self, row: np.ndarray) -> Root:
        """Sum one kernel's terms: earliest two first; signs and shifts carried to the root."""
        heap = []
        for t, v in enumerate(row):
            if v == 0:
                continue
            f, s = odd_part(int(abs(v)))
            n = self.products[t][f]
            heap.append((self.nodes[n].level, self.nodes[n].bits, len(heap), n, s, 1 if v > 0 else -1))
        if not heap:
            return Root(-1, 0, 1)
        heapq.heapify(heap)
        order = len(heap)
        while len(heap) > 1:
            _, _, _, n1, s1, g1 = heapq.heappop(heap)
            _, _, _, n2, s2, g2 = heapq.heappop(heap)
            if g1 != g2 and g1 < 0:
                n1, s1, g1, n2, s2, g2 = n2, s2, g2, n1, s1, g1
            s = min(s1, s2)
            a, b = self.nodes[n1], self.nodes[n2]
            sb = 1 if g1 == g2 else -1
            lo_b, hi_b = (b.lo << (s2 - s), b.hi << (s2 - s))
            if sb < 0:
                lo_b, hi_b = -hi_b, -lo_b
            node = self._adder(n1, s1 - s, 1, n2, s2 - s, sb, 0,
                               (a.lo << (s1 - s)) + lo_b, (a.hi << (s1 - s)) + hi_b)
            sign = g1 if g1 == g2 else 1
            heapq.heappush(heap, (self.nodes[node].level, self.nodes[node].bits, order, node, s, sign))
            order += 1
        _, _, _, n, s, g = heap[0]
        return Root(n, s, g)

    # -- figures -------------------------------------------------------------------------

    @property
    def adders(self) -> int:
        """Adders in the plan (shared products and trees)."""
        return len(self.nodes) - self.weights.shape[1]

    @property
    def product_adders(self) -> int:
        """Adders that make the shared products."""
        return sum(1 for n in self.nodes[self.weights.shape[1]:] if n.tap >= 0)

    def value(self, x: np.ndarray) -> np.ndarray:
        """Evaluate the plan on inputs ``x`` (``[..., fan_in]``): ``x @ W.T``, node by node."""
        x = np.asarray(x, dtype=np.int64)
        vals: list[np.ndarray] = [x[..., t] for t in range(x.shape[-1])]
        for n in self.nodes[x.shape[-1]:]:
            vals.append((n.sa * (vals[n.a] << n.ia) + n.sb * (vals[n.b] << n.ib)) >> n.shr)
        zero = np.zeros(x.shape[:-1], dtype=np.int64)
        return np.stack([zero if r.node < 0 else r.sign * (vals[r.node] << r.shift)
                         for r in self.roots], axis=-1)

    def lut_estimate(self) -> int:
        """LUTs of the adders: one per bit of each sum, plus a negation per negative root."""
        fan_in = self.weights.shape[1]
        luts = sum(n.bits for n in self.nodes[fan_in:])
        luts += sum(self.nodes[r.node].bits + r.shift for r in self.roots if r.node >= 0 and r.sign < 0)
        return luts
