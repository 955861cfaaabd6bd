"""The overlay packer: the *Combine* step of Complementary Sparsity.

:func:`pack` groups the kernels (rows of a ``[M, fan_in]`` int8 weight
matrix) into ``L = ceil(M / K)`` overlays of ``K`` kernels and lays each
overlay out as a dense array of slots (weight + kernel id), one word per
input row. Kernels whose non-zero positions do not overlap share a word;
where kernels of one overlay collide on a row, that row takes extra words
(*beats*). Perfectly complementary masks therefore pack with fill 1.0 and
no extra beat; arbitrary masks still pack, at a lower fill. The grouping
(perfect overlays, a greedy best fit, a seeded local search) minimises the
number of words, ``sum_i max_l count[l, i]``; see docs/compiler.md,
'Overlay packing'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import CosparseError
from .ir import MAX_KERNELS_PER_OVERLAY, Overlays

__all__ = ["pack", "unpack", "drain_order", "engine_parameters", "PackReport", "report",
           "PackError"]


class PackError(CosparseError, ValueError):
    """The weights cannot be packed as asked (bad shape, dtype or K)."""


@dataclass(frozen=True)
class PackReport:
    """How full the overlays of one layer are.

    Attributes
    ----------
    kernels, fan_in : int
        Weight matrix shape ``[M, fan_in]``.
    lanes, kernels_per_overlay : int
        ``L`` and ``K``.
    nnz : int
        Non-zero weights.
    words : int
        Weight-memory words (``fan_in`` plus the extra beats).
    slots : int
        ``words * L``.
    fill : float
        ``nnz / slots``: 1.0 when every slot holds a weight.
    extra_beats : int
        ``words - fan_in``: words beyond one per row (collisions; negative
        when rows with no weight at all are dropped).
    max_beats : int
        Largest number of words one row needs.
    """

    kernels: int
    fan_in: int
    lanes: int
    kernels_per_overlay: int
    nnz: int
    words: int
    slots: int
    fill: float
    extra_beats: int
    max_beats: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def report(ov: Overlays) -> PackReport:
    """Summarise the fill of packed overlays."""
    beats = ov.beats
    return PackReport(
        kernels=ov.num_kernels, fan_in=ov.fan_in, lanes=ov.lanes,
        kernels_per_overlay=ov.kernels_per_overlay, nnz=ov.nnz, words=ov.words,
        slots=ov.words * ov.lanes, fill=ov.fill, extra_beats=ov.words - ov.fan_in,
        max_beats=int(beats.max(initial=0)))


def engine_parameters(ov: Overlays) -> dict:
    """The arrays of packed overlays an overlay engine is built from.

    ``OverlayEngine(**engine_parameters(ov), entries=r, ...)``
    (:class:`cosparse.hw.overlay.OverlayEngine`).
    """
    return dict(weights=ov.weights, kernel_ids=ov.kernel_ids, row_start=ov.row_start,
                kernel_map=ov.kernel_map)


def _check_weights(weights: np.ndarray) -> np.ndarray:
    if not isinstance(weights, np.ndarray) or weights.ndim != 2:
        raise PackError(f"weights must be a 2-D [kernels, fan_in] array, got "
                        f"{getattr(weights, 'shape', type(weights).__name__)}")
    if weights.dtype != np.int8:
        raise PackError(f"weights must be int8 (quantized), got {weights.dtype}")
    if weights.shape[0] < 1 or weights.shape[1] < 1:
        raise PackError(f"weights shape {weights.shape} is empty")
    return weights


def pack(weights: np.ndarray, kernels_per_overlay: int | None = None, *,
         search_steps: int = 2000, seed: int = 0, dense: bool = False) -> Overlays:
    """Pack the kernels of one layer into overlays.

    Parameters
    ----------
    weights : ndarray of int8, shape (M, fan_in)
        One kernel per row (a conv filter flattened ``(ky, kx, c)``).
    kernels_per_overlay : int, optional
        ``K``, 1 to 256. ``None`` picks the K that needs the fewest slots
        among the divisors-like candidates around ``1 / density``.
    search_steps : int
        Swap attempts of the local search (0 disables it).
    seed : int
        Seed of the local search; packing is deterministic for a seed.
    dense : bool
        Keep at least one word for every input row, also a row where every
        kernel's weight is zero (otherwise such a row has no word and costs
        no beat). With ``K = 1`` every kernel is its own overlay and every
        weight, zero or not, has a slot of its own: the weight memory of a
        *dense* baseline build, which processes every input against every
        weight.

    Returns
    -------
    Overlays
        ``unpack(pack(W)) == W`` exactly. Lane ``l`` holds ``ceil((M - l) / L)``
        kernels (ids ``0..``), so the slots ``(lane l, id j)`` in use are exactly
        those with ``j * L + l < M``: the overlay engine drains accumulators in
        that order and stops at ``M``.

    Raises
    ------
    PackError
        ``weights`` is not a non-empty 2-D int8 array, or K is out of range.
    """
    weights = _check_weights(weights)
    m, fan_in = weights.shape
    if kernels_per_overlay is None:
        return _pack_auto(weights, search_steps, seed, dense)
    k = kernels_per_overlay
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_KERNELS_PER_OVERLAY:
        raise PackError(f"kernels_per_overlay must be an integer from 1 to "
                        f"{MAX_KERNELS_PER_OVERLAY}, got {k!r}")
    k = int(min(k, m))
    masks = weights != 0
    groups = _group(masks, k)
    if search_steps and k > 1:
        groups = _local_search(masks, groups, k, search_steps, seed)
    return _layout(weights, groups, k, dense)


def _pack_auto(weights: np.ndarray, search_steps: int, seed: int, dense: bool) -> Overlays:
    m, fan_in = weights.shape
    masks = weights != 0
    density = masks.mean()
    top = min(m, MAX_KERNELS_PER_OVERLAY, max(1, round(1 / density)) if density else m)
    candidates = sorted({1, top, *(max(1, round(top / d)) for d in (1.25, 1.5, 2, 3, 4))},
                        reverse=True)
    best = None
    for k in candidates:
        # Masks at density 1/top can only tile perfectly at K = top: the others
        # get the greedy fit alone, which keeps the search cheap.
        groups = _group(masks, k) if k == top else \
            _greedy_groups(masks, _lane_caps(m, k), np.arange(m))
        slots = _words(masks, groups) * len(groups)
        if best is None or slots < best[0]:
            best = (slots, k, groups)
        if slots == int(masks.sum()):
            break  # every slot used: nothing can beat it
    _, k, groups = best
    if search_steps and k > 1:
        groups = _local_search(masks, groups, k, search_steps, seed)
    return _layout(weights, groups, k, dense)


def _lane_caps(m: int, k: int) -> np.ndarray:
    """Kernels per lane: lane l holds the kernels numbered j*L + l < M (see :func:`pack`)."""
    lanes = math.ceil(m / k)
    return -(-(m - np.arange(lanes)) // lanes)


def _group(masks: np.ndarray, k: int) -> list[list[int]]:
    """Perfect (collision-free) overlays first, then a greedy fit of the rest."""
    caps = _lane_caps(masks.shape[0], k)
    perfect = _perfect_groups(masks, k) if k > 1 else []
    perfect = perfect[:int((caps == k).sum())]  # only full-size lanes take K kernels
    used = np.zeros(masks.shape[0], dtype=bool)
    for g in perfect:
        used[g] = True
    rest = np.flatnonzero(~used)
    return perfect + (_greedy_groups(masks, caps[len(perfect):], rest) if rest.size else [])


class _Budget:
    def __init__(self, nodes: int):
        self.left = nodes

    def spend(self) -> bool:
        self.left -= 1
        return self.left >= 0


def _perfect_groups(masks: np.ndarray, k: int) -> list[list[int]]:
    """Find groups of k kernels with mutually disjoint masks (complementary sets).

    Two kernels are *compatible* when their masks do not overlap. When the
    masks could tile (M a multiple of k, and the non-zeros add up to one
    cover of the live rows per overlay), a backtracking search partitions
    all kernels into exact covers: groups of k mutually compatible kernels
    that cover every live row once (Knuth's algorithm X, branching on the
    row with the fewest candidates, within a node budget). Otherwise, or
    when the budget runs out, each free kernel A (by decreasing non-zero
    count) takes the first exact cover around it, or else a k-clique of the
    compatibility graph: a member has at least k-2 compatible neighbours
    among A's candidates, so candidates with fewer are peeled off (a
    k-core), then the one with the lowest degree, until the rest is a clique.

    Complementary groups are k-cliques planted in a sparse random
    compatibility graph: at real sizes the first branch is the right one.
    Random masks fail fast and are left to the greedy fit.
    """
    m = masks.shape[0]
    f = masks.astype(np.float32)
    compat = (f @ f.T) == 0
    np.fill_diagonal(compat, False)
    nnz = masks.sum(axis=1)
    live = masks.any(axis=0)
    order = np.argsort(-nnz, kind="stable")
    if m % k == 0 and int(nnz.sum()) == (m // k) * int(live.sum()):
        tiling = _tile(masks, compat, nnz, live, k, order, np.ones(m, dtype=bool),
                       _Budget(20_000))
        if tiling is not None:
            return tiling
    free = np.ones(m, dtype=bool)
    groups: list[list[int]] = []
    for a in order:
        if not free[a]:
            continue
        cand = np.flatnonzero(compat[a] & free)
        if cand.size < k - 1:
            continue
        members = next(_exact_covers(masks, compat, nnz, cand, live & ~masks[a], k - 1,
                                     _Budget(50)), None)
        if members is None:
            members = _clique(compat, nnz, cand, k - 1)
        if members is None:
            continue
        group = [int(a), *map(int, members)]
        free[group] = False
        groups.append(group)
    return groups


def _tile(masks, compat, nnz, live, k, order, free, budget) -> list[list[int]] | None:
    """Partition the free kernels into exact covers, backtracking; None if not found."""
    first = next((int(a) for a in order if free[a]), None)
    if first is None:
        return []
    cand = np.flatnonzero(compat[first] & free)
    for members in _exact_covers(masks, compat, nnz, cand, live & ~masks[first], k - 1, budget):
        group = [first, *members]
        free[group] = False
        rest = _tile(masks, compat, nnz, live, k, order, free, budget)
        if rest is not None:
            return [group, *rest]
        free[group] = True
        if budget.left <= 0:
            break
    return None


def _exact_covers(masks, compat, nnz, cand, uncovered, need, budget):
    """Yield sets of ``need`` mutually compatible candidates covering ``uncovered`` once."""
    if not budget.spend():
        return
    if not uncovered.any():
        if need == 0:
            yield []
        return
    if need == 0 or cand.size < need:
        return
    options = masks[cand]
    per_row = options.sum(axis=0, dtype=np.int32)
    per_row[~uncovered] = np.iinfo(np.int32).max
    r = int(np.argmin(per_row))
    if per_row[r] == 0:
        return
    covering = cand[options[:, r]]
    for c in covering[np.argsort(-nnz[covering], kind="stable")]:
        for rest in _exact_covers(masks, compat, nnz, cand[compat[c, cand]],
                                  uncovered & ~masks[c], need - 1, budget):
            yield [int(c), *rest]


def _clique(compat: np.ndarray, nnz: np.ndarray, cand: np.ndarray, need: int) -> np.ndarray | None:
    sub = compat[np.ix_(cand, cand)]
    alive = np.ones(cand.size, dtype=bool)
    while True:
        deg = sub[alive][:, alive].sum(axis=1)
        n_alive = int(alive.sum())
        if n_alive < need:
            return None
        weak = deg < need - 1
        if weak.any():
            alive[np.flatnonzero(alive)[weak]] = False
            continue
        if deg.min() == n_alive - 1:
            break  # a clique
        alive[np.flatnonzero(alive)[np.argmin(deg)]] = False
    members = cand[alive]
    # A clique larger than needed: keep the partners with the most weights.
    return members[np.argsort(-nnz[members], kind="stable")[:need]]


def _greedy_groups(masks: np.ndarray, caps: np.ndarray, kernels: np.ndarray) -> list[list[int]]:
    fan_in = masks.shape[1]
    lanes = len(caps)
    counts = np.zeros((lanes, fan_in), dtype=np.int32)
    size = np.zeros(lanes, dtype=np.int64)
    groups: list[list[int]] = [[] for _ in range(lanes)]
    nnz = masks[kernels].sum(axis=1)
    order = kernels[np.argsort(-nnz, kind="stable")]
    big = np.int64(1) << 40
    lane_ix = np.arange(lanes, dtype=np.int64)
    for kern in order:
        rows = np.flatnonzero(masks[kern])
        overlap = counts[:, rows].sum(axis=1, dtype=np.int64)
        # Lexicographic (overlap, -size, lane) as one integer; full lanes excluded.
        score = overlap * big - size * (1 << 20) + lane_ix
        score[size >= caps] = np.iinfo(np.int64).max
        lane = int(np.argmin(score))
        groups[lane].append(int(kern))
        counts[lane, rows] += 1
        size[lane] += 1
    return groups


def _counts(masks: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    return np.stack([masks[g].sum(axis=0, dtype=np.int32) if g else
                     np.zeros(masks.shape[1], np.int32) for g in groups])


def _words(masks: np.ndarray, groups: list[list[int]]) -> int:
    return int(_counts(masks, groups).max(axis=0).sum())


def _local_search(masks: np.ndarray, groups: list[list[int]], k: int,
                  steps: int, seed: int) -> list[list[int]]:
    """Swap kernels between overlays while that lowers the word count."""
    groups = [list(g) for g in groups]
    counts = _counts(masks, groups)
    beats = counts.max(axis=0)
    if beats.max(initial=0) <= 1 or len(groups) < 2:
        return groups  # already perfect (one word per row), or nothing to swap with
    rng = np.random.default_rng(seed)
    lanes = len(groups)
    for _ in range(steps):
        hot = np.flatnonzero(beats == beats.max())
        row = int(hot[rng.integers(hot.size)])
        p_lanes = np.flatnonzero(counts[:, row] == beats[row])
        p = int(p_lanes[rng.integers(p_lanes.size)])
        a_cands = [x for x in groups[p] if masks[x, row]]
        a = a_cands[rng.integers(len(a_cands))]
        q = int(rng.integers(lanes - 1))
        q += q >= p
        # Swap a with a kernel of q that is free on this row (lane sizes never change).
        b_cands = [x for x in groups[q] if not masks[x, row]]
        if not b_cands:
            continue
        b = b_cands[rng.integers(len(b_cands))]
        touched = masks[a] | masks[b]
        cols = np.flatnonzero(touched)
        sub = counts[:, cols].copy()
        sub[p] -= masks[a, cols]
        sub[q] += masks[a, cols]
        sub[q] -= masks[b, cols]
        sub[p] += masks[b, cols]
        new_beats = sub.max(axis=0)
        if new_beats.sum() < beats[cols].sum() or (
                new_beats.sum() == beats[cols].sum() and rng.random() < 0.3):
            counts[:, cols] = sub
            beats[cols] = new_beats
            groups[p].remove(a)
            groups[q].append(a)
            groups[q].remove(b)
            groups[p].append(b)
    return groups


def _layout(weights: np.ndarray, groups: list[list[int]], k: int,
            dense: bool = False) -> Overlays:
    """Place each overlay's kernels into words: row i gets max_l count[l, i] words.

    With ``dense`` a row gets at least one word (of zero weights, kernel id 0,
    where no kernel of the lane uses it).
    """
    m, fan_in = weights.shape
    masks = weights != 0
    lanes = len(groups)
    counts = _counts(masks, groups)
    beats = counts.max(axis=0)
    if dense:
        beats = np.maximum(beats, 1)
    row_start = np.zeros(fan_in + 1, dtype=np.int64)
    np.cumsum(beats, out=row_start[1:])
    words = int(row_start[-1])
    w_mem = np.zeros((words, lanes), dtype=np.int8)
    id_mem = np.zeros((words, lanes), dtype=np.uint8)
    kernel_map = np.full((lanes, k), -1, dtype=np.int32)
    groups = sorted(groups, key=len, reverse=True)  # holes at the tail of the drain order
    for lane, g in enumerate(groups):
        g = sorted(g)
        kernel_map[lane, :len(g)] = g
        sub = masks[g]  # [len(g), fan_in]
        # Beat of kernel j on row i: how many earlier kernels of the lane use row i.
        beat = np.cumsum(sub, axis=0) - 1
        j, i = np.nonzero(sub)
        word = row_start[i] + beat[j, i]
        w_mem[word, lane] = weights[np.asarray(g)[j], i]
        id_mem[word, lane] = j
    return Overlays(weights=w_mem, kernel_ids=id_mem, row_start=row_start.astype(np.int32),
                    kernel_map=kernel_map, num_kernels=m)


def unpack(ov: Overlays) -> np.ndarray:
    """Rebuild the dense ``[M, fan_in]`` int8 weights from overlays."""
    dense = np.zeros((ov.num_kernels, ov.fan_in), dtype=np.int8)
    row_of_word = np.repeat(np.arange(ov.fan_in), ov.beats)
    word, lane = np.nonzero(ov.weights)
    kern = ov.kernel_map[lane, ov.kernel_ids[word, lane].astype(np.int64)]
    dense[kern, row_of_word[word]] = ov.weights[word, lane]
    return dense


def drain_order(ov: Overlays) -> tuple[Overlays, np.ndarray]:
    """Renumber the kernels so that kernel ``j * L + l`` sits in lane ``l`` with id ``j``.

    The overlay engine emits accumulator ``(lane n % L, id n // L)`` as the
    ``n``-th output of a group; with this numbering that output is kernel
    ``n``, so the hardware stream order is the channel order. Returns the
    renumbered overlays and ``perm``, with new kernel ``n`` = old kernel
    ``perm[n]`` (the caller permutes whatever is indexed by output channel:
    bias, requant constants, boost, the next layer's fan-in).
    """
    lanes, k = ov.kernel_map.shape
    n = np.arange(ov.num_kernels)
    perm = ov.kernel_map[n % lanes, n // lanes].astype(np.int64)
    if np.any(perm < 0):
        raise PackError("the overlays' used slots are not a prefix of the drain order")
    order = np.arange(k)[None, :] * lanes + np.arange(lanes)[:, None]
    kernel_map = np.where(order < ov.num_kernels, order, -1).astype(np.int32)
    return Overlays(weights=ov.weights, kernel_ids=ov.kernel_ids, row_start=ov.row_start,
                    kernel_map=kernel_map, num_kernels=ov.num_kernels), perm
