"""Performance model: cycles per inference of every pipeline stage, from the activity.

Each unit's docstring states its steady-state timing; this module applies
those formulas to the activations the golden model computes for given
inputs, stage by stage, so the prediction accounts for how many inputs are
active at every position. The network core is a dataflow pipeline with all
stages working at once, so the steady-state interval between inferences is
the slowest stage's cycles per frame (:func:`predict`); the tests compare it
with Verilator's count.

The formulas per stage, their accuracy and the known limit (frames that
queue behind a global k-WTA whose consumer is slower than its next frame's
write and scan are not modelled) are in docs/compiler.md, 'Performance model'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cosparse.hw import (adapters, dense_window, kwta, logic, overlay, pool, requant, rescale,
                         reshape, window)
from cosparse.compiler.folding import Folding
from cosparse.compiler.lower import lower
from cosparse.hw.network import NetworkCore
from cosparse.sim import golden

from . import ir

__all__ = ["StageCycles", "stage_cycles", "predict", "chunk_cost"]


def _ceil(a, b):
    return -(-np.asarray(a) // b)


@dataclass
class StageCycles:
    layer: str
    unit: str
    cycles: np.ndarray  # per frame

    @property
    def mean(self) -> float:
        return float(self.cycles.mean())


def _groups(x: np.ndarray) -> np.ndarray:
    """``[N, groups, G]`` view of a batch of maps or vectors."""
    return x.reshape(x.shape[0], -1, x.shape[-1]) if x.ndim == 4 else x.reshape(x.shape[0], 1, -1)


def _window_beats(x: np.ndarray, win: window.SparseWindow) -> np.ndarray:
    """Beats the window emits per output position, ``[N, Ho*Wo]``, and per-tap words."""
    n, h, w, _c = x.shape
    r = win.entries
    words = np.maximum(1, _ceil(np.count_nonzero(x, axis=-1), r))  # [N, H, W]
    pt, pl, pb, pr = win.padding
    padded = np.ones((n, h + pt + pb, w + pl + pr), dtype=np.int64)
    padded[:, pt:pt + h, pl:pl + w] = words
    kh, kw = win.kernel
    sh, sw = win.stride
    ho, wo = win.out_height, win.out_width
    total = np.zeros((n, ho, wo), dtype=np.int64)
    for dy in range(kh):
        for dx in range(kw):
            total += padded[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw]
    return total.reshape(n, -1)


def chunk_cost(active: np.ndarray, row_words: np.ndarray, r: int) -> np.ndarray:
    """Engine beats of groups sent in canonical chunks of ``r`` entries.

    A chunk (one input beat) costs the most words among its entries (at least 1).

    Parameters
    ----------
    active : numpy.ndarray
        ``[N, G, C]`` booleans: the entries of each group.
    row_words : numpy.ndarray
        ``[G, C]``: the overlay words of each entry's row.
    r : int
        Entries per chunk.

    Returns
    -------
    numpy.ndarray
        ``[N, G]`` engine beats; an empty group costs 0.
    """
    if row_words.size == 0 or row_words.max() <= 1:
        # Every chunk of one-word rows costs one beat (complementary masks: the common
        # case, and the fold's hot loop): the number of chunks.
        return _ceil(np.count_nonzero(active, axis=-1), r)
    rank = np.cumsum(active, axis=-1) - 1
    words = np.where(active, row_words[None], 0)
    cost = np.zeros(active.shape[:2], dtype=np.int64)
    for j in range(-(-active.shape[-1] // r)):
        in_chunk = active & (rank // r == j)
        m = np.where(in_chunk, words, 0).max(axis=-1)
        cost += np.where(in_chunk.any(axis=-1), np.maximum(m, 1), 0)
    return cost


def _window_cost(x: np.ndarray, win: window.SparseWindow, row_words: np.ndarray) -> np.ndarray:
    """Engine beats per output position, ``[N, Ho*Wo]``, for the beats a window sends.

    Each tap re-sends the beats its input position arrived in (``R``-entry
    chunks of its active channels, index ``tap * C + c``); an empty position
    or a tap in the padding is one empty beat.
    """
    n, h, w, c = x.shape
    kh, kw = win.kernel
    sh, sw = win.stride
    pt, pl, pb, pr = win.padding
    ho, wo = win.out_height, win.out_width
    active = (x != 0).reshape(n, h * w, c)
    total = np.zeros((n, ho, wo), dtype=np.int64)
    for dy in range(kh):
        for dx in range(kw):
            t = dy * kw + dx
            words = np.broadcast_to(row_words[t * c:(t + 1) * c], (h * w, c))
            cost = chunk_cost(active, words, win.entries).reshape(n, h, w)
            padded = np.ones((n, h + pt + pb, w + pl + pr), dtype=np.int64)
            padded[:, pt:pt + h, pl:pl + w] = np.maximum(cost, 1)
            total += padded[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw]
    return total.reshape(n, -1)


def _fields(x: np.ndarray, win) -> np.ndarray:
    """Receptive fields ``[N, Ho*Wo, kh*kw*C]`` in ``(ky, kx, c)`` order (zero padding)."""
    pt, pl, pb, pr = win.padding
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    v = sliding_window_view(xp, win.kernel, axis=(1, 2))  # [N, Ho', Wo', C, kh, kw]
    v = v[:, ::win.stride[0], ::win.stride[1]][:, :win.out_height, :win.out_width]
    v = v.transpose(0, 1, 2, 4, 5, 3)
    return v.reshape(x.shape[0], win.out_height * win.out_width, -1)


def _engine_cycles(feed: tuple, eng: overlay.OverlayEngine, out_width: int) -> np.ndarray:
    """Per frame: each input beat costs ``max(1, words) * L/P``; a group at least its drain.

    ``out_width``: the sums the stream behind the engine takes per cycle (``P``, or a
    narrower requantizer's ``Q``: then the drain goes at that pace).
    """
    passes = eng.lanes // eng.lanes_per_beat
    drain = -(-eng.num_kernels // min(eng.lanes_per_beat, out_width))
    row_words = eng.row_beats.astype(np.int64)
    kind = feed[0]
    if kind == "window":
        beats = _window_cost(feed[1], feed[2], row_words)
    elif kind == "groups":  # canonical chunks per group (zero-skip, k-WTA); empty: one beat
        active = feed[1]  # [N, groups, G]: a linear layer's input is one group of G = fan-in
        words = np.broadcast_to(row_words[:active.shape[2]], active.shape[1:])
        beats = np.maximum(chunk_cost(active, words, eng.entries), 1)
    else:  # "flatten": per-position chunks of one vector group, an empty last one closes it
        active = feed[1]
        pos_words = row_words.reshape(active.shape[1], active.shape[2])
        cost = chunk_cost(active, pos_words, eng.entries)
        beats = (cost.sum(axis=1) + ~active[:, -1].any(axis=-1))[:, None]
    return _group_schedule(beats * passes, drain)


#: Cycles from a group's last accumulation to the start of its drain (the
#: engine's multiply and read-modify-write stages), fitted to Verilator: it
#: matters only for groups of a few beats, where two accumulator buffers
#: alternate faster than they drain.
DRAIN_GAP = 3


def _group_schedule(acc: np.ndarray, drain: int) -> np.ndarray:
    """Engine cycles per frame for groups of ``acc`` ``[N, groups]`` accumulation cycles.

    Two accumulator buffers: group ``g`` starts after group ``g - 1``'s
    accumulation and once its buffer (that of ``g - 2``) is drained; drains
    run one after another, each ``DRAIN_GAP`` cycles after its group's
    accumulation at the earliest. Long groups cost their accumulation, short
    ones the drain rate.
    """
    n, groups = acc.shape
    t_end = np.zeros(n)
    drained = np.zeros((2, n))
    last_drain = np.zeros(n)
    start = None
    for g in range(groups):
        s = np.maximum(t_end, drained[g % 2])
        start = s if start is None else start
        t_end = s + acc[:, g]
        last_drain = np.maximum(t_end + DRAIN_GAP, last_drain) + drain
        drained[g % 2] = last_drain
    return t_end - start


def stage_cycles(net: ir.Network, folding: Folding, x: np.ndarray,
                 core: NetworkCore | None = None) -> list[StageCycles]:
    """Predicted cycles per frame of every stage of the core, for int8 inputs ``x``.

    Parameters
    ----------
    net : Network
        In drain order (as the core needs it).
    folding : Folding
    x : ndarray of int8, shape ``[N, *net.input.shape]``

    """
    core = core or lower(net, folding)
    acts = [np.asarray(x)]
    for layer in net.layers:
        acts.append(golden.run_layer(layer, acts[-1]))
    by_layer = {layer.name: i for i, layer in enumerate(net.layers)}
    out: list[StageCycles] = []
    keep_all = False
    windows = None  # receptive fields [N, Ho*Wo, kh*kw*C] from a dense window
    feed = None  # what the next engine receives: ("groups"|"flatten", active) or ("window", x, w)
    last_act = acts[0]
    for k, st in enumerate(core.stages):
        c = st.component
        i = by_layer.get(st.layer)
        xin = acts[i] if i is not None else last_act
        g = _groups(xin)
        n = g.shape[0]
        if isinstance(c, adapters.ZeroSkip) and windows is not None:
            g, windows = windows, None  # a dense window's receptive fields, one group each
            n = g.shape[0]
        if isinstance(c, adapters.ZeroSkip):
            nz = np.full(g.shape[:2], g.shape[2]) if c.keep_zeros else np.count_nonzero(g, axis=2)
            per = np.full(g.shape[:2], c.beats)
            if c.width > c.entries:  # the output can set the pace
                per = np.maximum(per, _ceil(nz, c.entries))
            cyc = per.sum(axis=1)
            feed = ("groups", np.ones(g.shape, bool) if c.keep_zeros else g != 0)
            keep_all = c.keep_zeros  # a window after it sees every element as active
        elif isinstance(c, dense_window.DenseWindow):
            cyc = np.full(n, c.cycles_per_frame)
            windows = _fields(xin, c)
        elif isinstance(c, logic.LogicEngine):
            # one receptive field per max(digits, ceil(M / P)) cycles, whatever its values
            cyc = np.full(n, windows.shape[1] * c.cycles_per_field)
            windows, feed, keep_all = None, None, False
        elif isinstance(c, window.SparseWindow):
            seen = np.ones_like(xin) if keep_all else xin
            cyc = _window_beats(seen, c).sum(axis=1)
            feed = ("window", seen, c)
        elif isinstance(c, overlay.OverlayEngine):
            if feed is None:
                feed = ("groups", g != 0)
            nxt = core.stages[k + 1].component if k + 1 < len(core.stages) else None
            cyc = _engine_cycles(feed, c, nxt.width_out if isinstance(nxt, adapters.Narrow)
                                 else c.lanes_per_beat)
            feed, keep_all = None, False
        elif isinstance(c, adapters.Narrow):
            cyc = np.full(n, _groups(acts[i + 1]).shape[1] * c.beats)
        elif isinstance(c, (requant.Requantizer, requant.BiasAdd, rescale.Rescaler)):
            cyc = np.full(n, _groups(acts[i + 1]).shape[1] * c.beats)
        elif isinstance(c, pool.MaxPool):
            cyc = np.full(n, g.shape[1] * -(-g.shape[2] // c.width))
        elif isinstance(c, pool.SparseMaxPool):
            cyc = np.full(n, g.shape[1] * c.beats)
        elif isinstance(c, adapters.Densify):
            cyc = np.full(n, g.shape[1] * -(-g.shape[2] // c.width))
        elif isinstance(c, kwta.LocalKWTA):
            cyc = np.full(n, g.shape[1] * c.cycles_per_position)
        elif isinstance(c, kwta.GlobalKWTA):
            cyc = np.full(n, c.cycles_per_frame)
            feed = ("groups", _groups(acts[i + 1]) != 0)
        elif isinstance(c, reshape.SparseFlatten):
            # beats in: one per non-empty input beat of each position, plus the closing one
            y = _groups(xin)
            nz = np.count_nonzero(y, axis=2)
            cyc = np.maximum(1, _ceil(nz, c.entries)).sum(axis=1)
            feed = ("flatten", y != 0)
        elif isinstance(c, (reshape.DenseFlatten, adapters.StreamFIFO, adapters.InputOffset,
                            adapters.Widen)):
            cyc = np.zeros(n, dtype=np.int64)
        else:  # pragma: no cover
            raise TypeError(f"no timing model for {type(c).__name__}")
        out.append(StageCycles(st.layer, st.unit, np.asarray(cyc, dtype=np.int64)))
        if i is not None:
            last_act = acts[i + 1]
    return out


def predict(net: ir.Network, folding: Folding, x: np.ndarray) -> dict:
    """Predicted steady-state interval (cycles per inference) and the bottleneck stage."""
    stages = stage_cycles(net, folding, x)
    worst = max(stages, key=lambda s: s.mean)
    return {"interval_cycles": worst.mean, "bottleneck": f"{worst.layer}:{worst.unit}",
            "stages": [{"layer": s.layer, "unit": s.unit, "cycles": s.mean} for s in stages]}
