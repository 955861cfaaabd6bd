"""Stream adapters: zero-skip (dense -> sparse), densify (sparse -> dense), skid output.

:class:`ZeroSkip` and :class:`Densify` change only the representation of a
group (the channels of one map position, or a whole vector); values are
unchanged (golden model: ``ZeroSkip`` and ``Densify`` are the identity).
Both keep ``last`` on the final beat of each group and ``end`` on the final
beat of each frame, and emit sparse groups packed the canonical way
(:func:`~cosparse.hw.streams.sparse_beats`): every beat of a group but its
last holds exactly ``R`` entries, entries past ``count`` are zero, and a
group without non-zeros is one beat with ``count == 0``.

:func:`skid_output` is the output stage every pipelined unit of this
package ends in: an output register plus a skid register, so that the
pipeline's advance signal (and the unit's input ``ready``) is a register and
never a combinational function of the downstream ``ready``.
"""

from __future__ import annotations

from functools import reduce
from operator import or_

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .util import bits, check_int, onehot, popcount, skid_output, typed_payload
from .streams import dense_layout, sparse_layout

__all__ = ["InputOffset", "Widen", "ZeroSkip", "Densify", "Narrow", "StreamFIFO"]


class ZeroSkip(wiring.Component):
    """Dense to sparse: drop the zeros of each group, keep ``(index, value)`` of the rest.

    The index of an element is its position within its group (the channel,
    for a map position): ``beat * D + lane``. Up to ``D`` non-zeros of a beat
    are compacted (prefix count over the lanes) and packed into ``R``-entry
    output beats of a packer; ``D`` and ``R`` are independent. Groups of one
    beat wider than the output (``C <= D``, ``D > R``: a dense window's
    receptive field) take a smaller *picker* (:attr:`picker`) with the same
    stream and timing.

    With ``D <= R`` one input beat per cycle, no bubbles (``ceil(C / D)``
    cycles per group); with ``D > R`` about ``max(ceil(C / D), ceil(nnz /
    R))`` cycles per group. Latency 3 cycles from a group's last input beat
    to its last output beat (4 when the packer holds more than ``R`` entries
    of the group at that point). See docs/hardware.md, 'Stream adapters'.

    Parameters
    ----------
    group : int
        ``C``, elements per group (channels of a position, or vector length).
    width : int
        ``D``, elements per input beat.
    entries : int
        ``R``, entries per output beat (1 to 64).
    keep_zeros : bool
        Keep the zeros too: every element becomes an entry. This is the
        dense baselines' input path (no activation skipping), with the same
        stream format and timing as a group without zeros.

    Members
    -------
    i : In(stream.Signature(dense_layout(D, signed(V))))
    o : Out(stream.Signature(sparse_layout(R, bits(C), signed(V))))

    ``V`` is ``value_bits``: 8 for int8 activations, 9 for int9 ones.

    Raises
    ------
    ValueError
        A parameter is not an integer in its range.
    """

    def __init__(self, group: int, *, width: int = 8, entries: int = 8, keep_zeros: bool = False,
                 value_bits: int = 8):
        self.keep_zeros = bool(keep_zeros)
        check_int("group (C)", group, 1)
        check_int("width (D)", width, 1, 256)
        check_int("entries (R)", entries, 1, 64)
        self.value_bits = check_int("value_bits", value_bits, 2, 16)
        self.group, self.width, self.entries = group, width, entries
        self.beats = -(-group // width)
        self.index_bits = bits(group)
        self.in_layout = dense_layout(width, signed(value_bits))
        self.out_layout = sparse_layout(entries, self.index_bits, signed(value_bits))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    @property
    def cycles_per_group(self) -> int:
        """Steady-state cycles per group when ``D <= R`` (input-bound)."""
        return self.beats

    @property
    def picker(self) -> bool:
        """One-beat groups wider than the output: the picker structure (docs/hardware.md)."""
        return self.beats == 1 and self.width > self.entries

    def elaborate(self, platform):
        m = Module()
        C, D, R, B = self.group, self.width, self.entries, self.beats
        ib, vb = self.index_bits, self.value_bits
        ew = ib + vb  # one entry: index, value
        if self.picker:
            return self._elaborate_picker(m)
        cap = max(R, D)  # packer buffer (entries)
        p = self.i.payload

        # ---------------- stage P: the input beat and its lanes' non-zero flags
        p_v, p_last, p_end = Signal(), Signal(), Signal()
        p_data = Signal(D * vb)
        p_nz = Signal(D)
        p_base = Signal(range(max(B, 2) * D))  # index of lane 0
        p_free = Signal()
        a_v, a_last, a_end = Signal(), Signal(), Signal()
        a_free = Signal()
        a_take = Signal()  # B takes A this cycle
        m.d.comb += [a_free.eq(~a_v | a_take), p_free.eq(~p_v | a_free),
                     self.i.ready.eq(p_free)]

        bg = Signal(range(max(B, 2)))  # beat within the group
        base = Signal(range(max(B, 2) * D))  # bg * D
        with m.If(self.i.valid & p_free):
            with m.If(p.last | (bg == B - 1)):
                m.d.sync += [bg.eq(0), base.eq(0)]
            with m.Else():
                m.d.sync += [bg.eq(bg + 1), base.eq(base + D)]
        tail = C - (B - 1) * D  # real lanes of the group's final beat
        with m.If(p_free):
            m.d.sync += p_v.eq(self.i.valid)
            with m.If(self.i.valid):
                m.d.sync += [p_data.eq(p.data.as_value()), p_base.eq(base),
                             p_last.eq(p.last), p_end.eq(p.end)]
                keep = [1 if self.keep_zeros else (p.data[d] != 0) for d in range(D)]
                m.d.sync += [p_nz[d].eq(keep[d] & ~((bg == B - 1) if d >= tail else 0))
                             for d in range(D)]

        # ---------------- stage A: compaction of one beat's non-zeros
        a_k = Signal(range(D + 1))
        a_gt = Signal(R + 1)  # a_gt[v]: v + a_k > R (precomputed for the packer's decision)
        a_ent = Signal(D * ew)  # D entries, the first a_k valid, the rest zero
        pos = [popcount(p_nz[:d]) for d in range(D)]  # slot of lane d among the non-zeros
        lane_ent = [Cat((p_base + d)[:ib], p_data[d * vb:(d + 1) * vb]) for d in range(D)]
        slots = [onehot([(p_nz[d] & (pos[d] == j), lane_ent[d]) for d in range(j, D)], ew)
                 for j in range(D)]
        k_in = popcount(p_nz)
        with m.If(a_free):
            m.d.sync += a_v.eq(p_v)
            with m.If(p_v):
                m.d.sync += [a_gt.eq(Cat(*[k_in > R - v for v in range(R + 1)])),
                             a_ent.eq(Cat(*slots)), a_k.eq(k_in),
                             a_last.eq(p_last), a_end.eq(p_end)]

        # ---------------- stage B: packer
        # buf holds n entries (the rest zero). A's entries are appended behind them
        # (offset n) or, once the group is closed, placed after a full beat (offset
        # R) so that they come out at the front when the beat leaves. Every emission
        # shifts the combination down by R entries; so the next buffer is one
        # 2:1 choice, and every decision is a function of registers only (adv, the
        # skid output's, just enables the registers).
        buf = Signal(cap * ew)
        n = Signal(range(cap + 1))
        n_le_r = Signal(init=1)  # n <= R
        closed = Signal()  # the group's input is complete; buf holds its tail
        cend = Signal()
        e_valid = Signal()
        e_ent = Signal(R * ew)
        e_cnt = Signal(range(R + 1))
        e_last, e_end = Signal(), Signal()
        adv = skid_output(m, self.o, e_valid,
                          typed_payload(m, self.o, entries=e_ent, count=e_cnt, last=e_last,
                                        end=e_end))

        take = Signal()  # A's entries go into the combination
        m.d.comb += [take.eq(a_v & n_le_r), a_take.eq(adv & take)]
        over = Signal()  # not closed: more than R entries known, a full beat leaves
        m.d.comb += over.eq(Mux(take, reduce(or_, [(n == v) & a_gt[v] for v in range(R + 1)]),
                                ~n_le_r))
        width = (R + D) * ew
        shifted = Cat(Mux(take, a_ent, 0), Const(0, R * ew))
        off = Mux(closed, R, n)
        for k in range(ceil_log2(R + 1)):
            step = (1 << k) * ew
            shifted = Mux(off[k], (shifted << step)[:width], shifted)
        comb = Signal(width)
        m.d.comb += comb.eq(buf | shifted)
        m.d.comb += e_ent.eq(comb[:R * ew])  # beyond the count these are zero

        m.d.comb += e_valid.eq(closed | over | (take & a_last))
        with m.If(closed):
            m.d.comb += [e_cnt.eq(Mux(n_le_r, n, R)), e_last.eq(n_le_r),
                         e_end.eq(cend & n_le_r)]
        with m.Elif(over):
            m.d.comb += e_cnt.eq(R)
        with m.Else():  # the group's last beat, at most R entries in all
            m.d.comb += [e_cnt.eq(n + a_k), e_last.eq(1), e_end.eq(a_end)]

        occ = Signal(range(R + D + 1))  # entries in comb, a held full beat counting R
        m.d.comb += occ.eq(Mux(closed & n_le_r, R, n) + Mux(take, a_k, 0))
        n_next = Signal.like(n)
        m.d.comb += n_next.eq(Mux(e_valid, Mux(occ > R, occ - R, 0), occ))
        with m.If(adv):
            m.d.sync += [buf.eq(Mux(e_valid, comb[R * ew:], comb[:cap * ew])),
                         n.eq(n_next), n_le_r.eq(n_next <= R)]
            with m.If(closed):
                with m.If(n_le_r):
                    m.d.sync += [closed.eq(take & a_last), cend.eq(a_end)]
            with m.Else():
                m.d.sync += [closed.eq(over & take & a_last), cend.eq(a_end)]
        return m

    def _elaborate_picker(self, m: Module) -> Module:
        C, R = self.group, self.entries
        ib, vb = self.index_bits, self.value_bits
        p = self.i.payload
        # ---------------- stage P: the input beat, its real lanes' non-zero flags
        p_v, p_end = Signal(), Signal()
        p_data = Signal(C * vb)
        p_nz = Signal(C)
        h_free = Signal()
        p_free = Signal()
        m.d.comb += [p_free.eq(~p_v | h_free), self.i.ready.eq(p_free)]
        with m.If(p_free):
            m.d.sync += p_v.eq(self.i.valid)
            with m.If(self.i.valid):
                m.d.sync += [p_data.eq(p.data.as_value()[:C * vb]), p_end.eq(p.end),
                             p_nz.eq(Cat(*[1 if self.keep_zeros else (p.data[d] != 0)
                                           for d in range(C)]))]

        # ---------------- stage H: the held beat, lane ranks, the chunk being emitted
        h_v, h_end = Signal(), Signal()
        h_data = Signal(C * vb)
        h_nz = Signal(C)
        h_rank = [Signal(range(C), name=f"h_rank_{d}") for d in range(C)]
        h_base = [Signal(range(C + R), name=f"h_base_{s}") for s in range(R)]  # j*R + s
        h_left = Signal(range(C + 1))  # non-zeros not yet emitted
        h_final = Signal()  # h_left <= R: this chunk is the beat's (the group's) last
        e_cnt = Signal(range(R + 1))
        m.d.comb += e_cnt.eq(Mux(h_final, h_left, R))
        ents = []
        for s in range(R):
            sel = [(h_nz[d] & (h_rank[d] == h_base[s]),
                    Cat(Const(d, ib), h_data[d * vb:(d + 1) * vb])) for d in range(s, C)]
            ents.append(onehot(sel, ib + vb))
        out = typed_payload(m, self.o, entries=ents, count=e_cnt, last=h_final,
                            end=h_final & h_end)
        adv = skid_output(m, self.o, h_v, out)
        m.d.comb += h_free.eq(~h_v | (adv & h_final))
        nnz = popcount(p_nz)
        with m.If(h_free):
            m.d.sync += h_v.eq(p_v)
            with m.If(p_v):
                m.d.sync += [h_data.eq(p_data), h_nz.eq(p_nz), h_end.eq(p_end),
                             h_left.eq(nnz), h_final.eq(nnz <= R)]
                m.d.sync += [h_rank[d].eq(popcount(p_nz[:d])) for d in range(1, C)]
                m.d.sync += [h_base[s].eq(s) for s in range(R)]
        with m.Elif(adv):  # a chunk left and more follow
            m.d.sync += [h_left.eq(h_left - R), h_final.eq(h_left <= 2 * R)]
            m.d.sync += [h_base[s].eq(h_base[s] + R) for s in range(R)]
        return m


class Narrow(wiring.Component):
    """Dense beats of ``P`` elements into beats of ``Q`` (``Q`` divides ``P``).

    Between an overlay engine and its requantizer: the engine drains ``P``
    sums per cycle in bursts, the requantizer behind it needs only the
    average rate, so it can have fewer lanes (fewer DSP products) and so can
    the units after it (pool, k-WTA). Each input beat is held and shifted
    out ``Q`` elements per cycle; a group of ``C`` elements leaves as
    ``ceil(C / Q)`` beats (the input's padding beyond ``C`` is dropped),
    ``last``/``end`` on its final beat.

    One output beat per cycle, no bubbles between input beats:
    ``ceil(C / Q)`` cycles per group. Latency 1 cycle. ``i.ready`` follows
    ``o.ready`` in the same cycle (the hold register is the output
    register: a skid buffer would double the registers of a wide beat).

    Parameters
    ----------
    group : int
        ``C``, elements per group.
    width_in, width_out : int
        ``P`` and ``Q``.
    elem_shape : ShapeLike
        The elements' shape (an engine's ``signed(acc_bits)``).

    Members
    -------
    i : In(stream.Signature(dense_layout(P, elem_shape)))
    o : Out(stream.Signature(dense_layout(Q, elem_shape)))

    Raises
    ------
    ValueError
        A parameter is out of range, or ``Q`` does not divide ``P``.
    """

    def __init__(self, group: int, *, width_in: int, width_out: int, elem_shape=signed(8)):
        check_int("group (C)", group, 1)
        check_int("width_in (P)", width_in, 1, 256)
        check_int("width_out (Q)", width_out, 1, 256)
        if width_in % width_out:
            raise ValueError(f"width_out (Q = {width_out}) must divide width_in (P = {width_in})")
        self.group, self.width_in, self.width_out = group, width_in, width_out
        self.elem_shape = Shape.cast(elem_shape)
        self.beats = -(-group // width_out)
        self.in_layout = dense_layout(width_in, elem_shape)
        self.out_layout = dense_layout(width_out, elem_shape)
        super().__init__({"i": In(stream.Signature(self.in_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    def elaborate(self, platform):
        m = Module()
        P, Q, B = self.width_in, self.width_out, self.beats
        n = P // Q
        w = Q * self.elem_shape.width  # bits of one output beat
        h_v, h_end = Signal(), Signal()
        h_data = Signal(P * self.elem_shape.width)
        j = Signal(range(max(n, 2)))  # output beat within the held input beat
        g = Signal(range(max(B, 2)))  # output beat within the group
        g_last = Signal(init=int(B == 1))  # g == B - 1
        final = Signal()  # the held beat's last output beat
        m.d.comb += final.eq((j == n - 1) | g_last)
        # The hold register is the output register (no skid: the payload is wide, up to
        # P sums, and the requantizer behind registers its ready).
        adv = Signal()
        m.d.comb += [self.o.valid.eq(h_v), adv.eq(self.o.ready),
                     self.o.payload.as_value().eq(Cat(h_data[:w], g_last, g_last & h_end))]
        h_free = Signal()
        m.d.comb += [h_free.eq(~h_v | (adv & final)), self.i.ready.eq(h_free)]
        with m.If(h_free):
            m.d.sync += h_v.eq(self.i.valid)
            with m.If(self.i.valid):
                m.d.sync += [h_data.eq(self.i.payload.data.as_value()),
                             h_end.eq(self.i.payload.end), j.eq(0)]
        with m.Elif(adv):
            m.d.sync += [h_data.eq(h_data >> w), j.eq(j + 1)]
        with m.If(adv & h_v):
            m.d.sync += [g.eq(Mux(g_last, 0, g + 1)), g_last.eq((g == B - 2) if B > 1 else 1)]
            if B > 1:
                with m.If(g_last):
                    m.d.sync += g_last.eq(0)
        return m


class Densify(wiring.Component):
    """Sparse to dense: every element of a group, zeros included, in order.

    Each sparse group (entries in increasing index order) becomes
    ``ceil(C / D)`` dense beats holding the values at their indices and
    zeros elsewhere; an empty group becomes an all-zero group.

    The conversion streams through the group (a held input beat ``H``, the
    dense beat being built, ``R x D`` comparators) rather than buffering it.
    One dense beat per cycle: a group takes ``ceil(C / D) + s`` cycles, ``s``
    the number of its input-beat boundaries that fall inside a dense beat (0
    for groups of one input beat, e.g. ``k <= R`` after a k-WTA). Latency 2
    cycles. See docs/hardware.md, 'Stream adapters'.

    Parameters
    ----------
    group : int
        ``C``, elements per group.
    entries : int
        ``R``, entries per input beat (1 to 64).
    width : int
        ``D``, elements per output beat.

    Members
    -------
    i : In(stream.Signature(sparse_layout(R, bits(C), signed(V))))
    o : Out(stream.Signature(dense_layout(D, signed(V))))

    ``V`` is ``value_bits`` (8, or 9 for int9 activations).

    Raises
    ------
    ValueError
        A parameter is not an integer in its range.
    """

    def __init__(self, group: int, *, entries: int = 8, width: int = 8, value_bits: int = 8):
        check_int("group (C)", group, 1)
        check_int("entries (R)", entries, 1, 64)
        check_int("width (D)", width, 1, 256)
        self.value_bits = check_int("value_bits", value_bits, 2, 16)
        self.group, self.entries, self.width = group, entries, width
        self.beats = -(-group // width)
        self.index_bits = bits(group)
        self.in_layout = sparse_layout(entries, self.index_bits, signed(value_bits))
        self.out_layout = dense_layout(width, signed(value_bits))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def cycles_per_group(self, inner_boundaries: int = 0) -> int:
        """Cycles per group (no stalls) with ``inner_boundaries`` input-beat boundaries
        inside a dense beat (0 for one-beat groups); see Throughput."""
        return self.beats + inner_boundaries

    def elaborate(self, platform):
        m = Module()
        C, D, R, B = self.group, self.width, self.entries, self.beats
        ib = self.index_bits
        pow2 = D & (D - 1) == 0
        lb = ceil_log2(D)

        # ---------------- H: the held input beat, with its entries' facts precomputed
        hv = Signal()
        h = Signal(self.in_layout)
        h_ok = Signal(R)  # entry r is valid (r < count)
        h_empty = Signal()
        h_max = Signal(ib)  # the index of its last valid entry (the largest)
        consume = Signal()
        m.d.comb += self.i.ready.eq(~hv | consume)
        p = self.i.payload
        with m.If(self.i.ready):
            m.d.sync += hv.eq(self.i.valid)
            with m.If(self.i.valid):
                m.d.sync += [h.eq(p), h_ok.eq(Cat(*[r < p.count for r in range(R)])),
                             h_empty.eq(p.count == 0),
                             h_max.eq(onehot([(p.count == r + 1, p.entries[r].index)
                                               for r in range(R)], ib))]

        # ---------------- the dense beat being built
        b = Signal(range(max(B, 2)))
        base = Signal(range((max(B, 2) + 1) * D))  # b * D
        base_next = Signal.like(base, init=D)  # (b + 1) * D
        vb = self.value_bits
        acc = Signal(D * vb)
        tail, tail_end = Signal(), Signal()  # the group's input is consumed: zero beats follow
        last_beat = Signal()
        m.d.comb += last_beat.eq(b == B - 1)

        # Lane d of beat b takes the entry whose index is b * D + d.
        match = []  # match[r][d]
        for r in range(R):
            e = h.entries[r]
            if pow2:  # index = beat * D + lane, as bit fields
                in_b = h_ok[r] & (e.index[lb:] == b)
                lane = e.index[:lb] if lb else Const(0, 1)
            else:
                diff = Signal(signed(max(ib, len(base)) + 1), name=f"rel{r}")
                m.d.comb += diff.eq(e.index - base)
                in_b = h_ok[r] & (diff >= 0) & (diff < D)
                lane = diff
            match.append([in_b & (lane == d) for d in range(D)])
        lanes = []
        pad_from = C - (B - 1) * D
        for d in range(D):
            v = onehot([(match[r][d], h.entries[r].value.as_unsigned()) for r in range(R)], vb)
            if d >= pad_from:  # padding lane of the final beat
                v = Mux(last_beat, 0, v)
            lanes.append(v)
        beat = Signal(D * vb)
        m.d.comb += beat.eq(acc | Cat(*lanes))

        # H has entries past beat b: beat b is complete, H stays.
        beyond = Signal()
        m.d.comb += beyond.eq(~h_empty & (h_max >= base_next) & ~last_beat)
        # Look-ahead at the input port: beat b is complete when H is consumed and the
        # next beat of the group (already offered) holds nothing for it.
        next_beyond = Signal()
        m.d.comb += next_beyond.eq(self.i.valid & ~last_beat & Mux(
            p.count == 0, p.last, p.entries[0].index >= base_next))

        # Decisions from registers (and the input port); adv only enables registers.
        e_valid, e_last, e_end = Signal(), Signal(), Signal()
        e_data = Signal(D * vb)
        finish = Signal()  # H is the group's last beat and is consumed this cycle
        m.d.comb += [
            finish.eq(~tail & hv & ~beyond & h.last),
            e_valid.eq(tail | (hv & (beyond | h.last | next_beyond))),
            e_data.eq(Mux(tail, 0, beat)),
            e_last.eq((tail | finish) & last_beat),
            e_end.eq(Mux(tail, tail_end, h.end) & (tail | finish) & last_beat),
        ]
        adv = skid_output(m, self.o, e_valid,
                          typed_payload(m, self.o, data=e_data, last=e_last, end=e_end))
        m.d.comb += consume.eq(adv & ~tail & hv & ~beyond)

        with m.If(adv):
            with m.If(e_valid):
                m.d.sync += acc.eq(0)
                with m.If(last_beat):
                    m.d.sync += [b.eq(0), base.eq(0), base_next.eq(D), tail.eq(0)]
                with m.Else():
                    m.d.sync += [b.eq(b + 1), base.eq(base_next), base_next.eq(base_next + D)]
                with m.If(finish):
                    m.d.sync += [tail.eq(~last_beat), tail_end.eq(h.end)]
            with m.Elif(hv & ~tail):
                m.d.sync += acc.eq(beat)
        return m


class StreamFIFO(wiring.Component):
    """A first-in first-out buffer of ``depth`` beats on a stream of any payload layout.

    Used behind units that hold whole frames (the global k-WTA): with room
    for a frame's output, the unit emits at its own pace and is free for the
    next frame while a slower consumer drains this buffer, so the pipeline's
    interval is its slowest stage's time. Throughput one beat per cycle,
    latency 1 cycle.

    Parameters
    ----------
    layout : data.StructLayout
        The payload layout (both sides).
    depth : int
        Beats held (at least 1).
    """

    def __init__(self, layout, depth: int):
        check_int("depth", depth, 1)
        self.layout, self.depth = layout, depth
        self.in_layout = self.out_layout = layout
        self._fifo = None
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    @property
    def fifo(self) -> SyncFIFOBuffered:
        """The buffer (its ``level``: the beats held), made when first asked for."""
        if self._fifo is None:
            self._fifo = SyncFIFOBuffered(width=Shape.cast(self.layout).width,
                                          depth=self.depth)
        return self._fifo

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = self.fifo
        m.d.comb += [fifo.w_data.eq(self.i.payload.as_value()), fifo.w_en.eq(self.i.valid),
                     self.i.ready.eq(fifo.w_rdy),
                     self.o.payload.as_value().eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy),
                     fifo.r_en.eq(self.o.ready)]
        return m


def _lanewise(unit, f) -> Module:
    """A combinational dense-stream unit: ``o.data[d] = f(i.data[d])``, flags passed on."""
    m = Module()
    p, q = unit.i.payload, unit.o.payload
    m.d.comb += [unit.o.valid.eq(unit.i.valid), unit.i.ready.eq(unit.o.ready),
                 q.last.eq(p.last), q.end.eq(p.end)]
    m.d.comb += [q.data[d].eq(f(p.data[d])) for d in range(unit.width)]
    return m


class InputOffset(wiring.Component):
    """The network input's bytes to int9 values: ``v = byte + offset`` (bytes unsigned).

    A model whose input is a uint8 (or an int8 with a zero point) has values
    ``lo..lo + 255`` once its zero point is subtracted; the host sends
    ``v - lo`` as one byte each, and this adds ``lo`` back. Combinational, no
    latency: a constant add per lane.

    Parameters
    ----------
    width : int
        ``D``, elements per beat.
    offset : int
        ``lo``, -255 to 0.

    Members
    -------
    i : In(stream.Signature(dense_layout(D, signed(8))))
        Bytes (their bits read unsigned).
    o : Out(stream.Signature(dense_layout(D, signed(9))))
    """

    def __init__(self, width: int, offset: int):
        check_int("width (D)", width, 1, 256)
        self.width, self.offset = width, check_int("offset", offset, -255, 0)
        self.in_layout = dense_layout(width, signed(8))
        self.out_layout = dense_layout(width, signed(9))
        super().__init__({"i": In(stream.Signature(self.in_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    def elaborate(self, platform):
        return _lanewise(self, lambda v: v.as_unsigned() + self.offset)


class Widen(wiring.Component):
    """A dense stream's elements sign-extended to a wider shape (int9 outputs to 16 bits
    for the host link's whole bytes). Combinational, no latency.

    Parameters
    ----------
    width : int
        ``D``, elements per beat.
    in_bits, out_bits : int
        Signed element widths, ``in_bits <= out_bits``.
    """

    def __init__(self, width: int, in_bits: int, out_bits: int):
        check_int("width (D)", width, 1, 256)
        check_int("in_bits", in_bits, 1, 64)
        check_int("out_bits", out_bits, in_bits, 64)
        self.width = width
        self.in_layout = dense_layout(width, signed(in_bits))
        self.out_layout = dense_layout(width, signed(out_bits))
        super().__init__({"i": In(stream.Signature(self.in_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    def elaborate(self, platform):
        return _lanewise(self, lambda v: v)
