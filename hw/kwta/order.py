"""Emitters of a position's winners in channel order: all at once (:class:`WinnerSorter`)
or one per cycle (:class:`WinnerPicker`).

Both take the ``k`` winner cells of a position in any order
(:func:`~.common.winners_layout`; the valid cells hold distinct channels)
and emit the valid ones with a non-zero value as one sparse group, ``R``
entries per beat packed the canonical way; a group without such winners
is one empty beat.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..streams import sparse_layout
from ..util import bits, check_int, onehot, popcount
from .common import SerialOutput, winners_layout

__all__ = ["WinnerSorter", "WinnerPicker"]


class _Emitter(wiring.Component):
    def __init__(self, k: int, entries: int, index_bits: int, value_bits: int = 8):
        check_int("k", k, 1)
        check_int("entries (R)", entries, 1, 64)
        check_int("index_bits", index_bits, 1)
        self.k, self.entries, self.index_bits = k, entries, index_bits
        self.value_bits = check_int("value_bits", value_bits, 2, 16)
        self.in_layout = winners_layout(k, index_bits, value_bits)
        self.out_layout = sparse_layout(entries, index_bits, signed(value_bits))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })


class WinnerSorter(_Emitter):
    """Winners sorted by channel in one step, shifted out ``R`` per beat.

    Three registers deep, each deciding its move from registers only, so
    ``o.ready`` reaches no further than the out registers: *hold* (the
    cells as taken), *slot* (each non-zero winner's place among them in
    channel order), *out* (two deep: the position being emitted and the
    next one, sorted). A position a cycle is taken while ``R >= k``.

    Parameters
    ----------
    k : int
        Winner cells per position.
    entries : int
        ``R``, entries per output beat (1 to 64).
    index_bits : int
        Width of a channel index.

    Members
    -------
    i : In(stream.Signature(winners_layout(k, index_bits)))
    o : Out(stream.Signature(sparse_layout(R, index_bits, signed(V))))
    """

    def elaborate(self, platform):
        m = Module()
        k, R, ib, vb = self.k, self.entries, self.index_bits, self.value_bits
        hold_v, hold_end = Signal(), Signal()
        hold = [Signal(ib + vb + 1, name=f"hold_{w}") for w in range(k)]  # idx, x, valid
        sl_v, sl_end = Signal(), Signal()
        o_v, o_end = Signal(), Signal()  # out head: the position being emitted
        o_rem = Signal(range(k + 1))
        ob_v, ob_end = Signal(), Signal()  # out tail: the next position, sorted
        ob_count = Signal(range(k + 1))
        o_last = Signal()
        m.d.comb += o_last.eq(o_rem <= R)
        head_free, sl_move, hold_move = (Signal(name=n) for n in (
            "head_free", "sl_move", "hold_move"))
        m.d.comb += [
            head_free.eq(~o_v | (self.o.ready & o_last)),
            sl_move.eq(sl_v & ~ob_v),
            hold_move.eq(hold_v & (~sl_v | ~ob_v)),
            self.i.ready.eq(~hold_v | ~sl_v | ~ob_v),
        ]
        with m.If(hold_move):
            m.d.sync += hold_v.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [hold_v.eq(1), hold_end.eq(self.i.payload.end)]
            m.d.sync += [hold[j].eq(self.i.payload.cells[j].as_value()) for j in range(k)]

        # slot: place of each non-zero winner in channel order
        h_idx = [h[:ib] for h in hold]
        h_x = [h[ib:ib + vb] for h in hold]
        h_nz = [h[ib + vb] & (h[ib:ib + vb] != 0) for h in hold]
        sb = bits(k + 1)
        sl_slot = [Signal(sb, name=f"sl_slot_{w}") for w in range(k)]
        sl_ent = [Signal(ib + vb, name=f"sl_ent_{w}") for w in range(k)]
        sl_nz = [Signal(name=f"sl_nz_{w}") for w in range(k)]
        sl_count = Signal(range(k + 1))
        with m.If(sl_move):
            m.d.sync += sl_v.eq(0)
        with m.If(hold_move):
            m.d.sync += [sl_v.eq(1), sl_end.eq(hold_end), sl_count.eq(popcount(h_nz))]
            for w in range(k):
                before = [h_nz[u] & (h_idx[u] < h_idx[w]) for u in range(k) if u != w]
                m.d.sync += [sl_slot[w].eq(popcount(before)), sl_ent[w].eq(Cat(h_idx[w], h_x[w])),
                             sl_nz[w].eq(h_nz[w])]

        # out: winners sorted by channel, shifted out R per beat
        sorted_ = [Signal(ib + vb, name=f"sorted_{s}") for s in range(k)]
        m.d.comb += [sorted_[s].eq(onehot((sl_nz[w] & (sl_slot[w] == s), sl_ent[w])
                                          for w in range(k))) for s in range(k)]
        o_ent = [Signal(ib + vb, name=f"o_ent_{s}") for s in range(k)]
        ob_ent = [Signal(ib + vb, name=f"ob_ent_{s}") for s in range(k)]
        with m.If(self.o.ready & o_v):
            with m.If(o_last):
                m.d.sync += o_v.eq(0)
            with m.Else():
                m.d.sync += o_rem.eq(o_rem - R)
                m.d.sync += [o_ent[s].eq(o_ent[s + R] if s + R < k else 0) for s in range(k)]
        with m.If(head_free & ob_v):
            m.d.sync += [o_v.eq(1), o_end.eq(ob_end), o_rem.eq(ob_count), ob_v.eq(0)]
            m.d.sync += [o_ent[s].eq(ob_ent[s]) for s in range(k)]
        with m.Elif(head_free & sl_move):
            m.d.sync += [o_v.eq(1), o_end.eq(sl_end), o_rem.eq(sl_count)]
            m.d.sync += [o_ent[s].eq(sorted_[s]) for s in range(k)]
        with m.Elif(sl_move):
            m.d.sync += [ob_v.eq(1), ob_end.eq(sl_end), ob_count.eq(sl_count)]
            m.d.sync += [ob_ent[s].eq(sorted_[s]) for s in range(k)]
        op = self.o.payload
        m.d.comb += [
            self.o.valid.eq(o_v),
            op.count.eq(Mux(o_last, o_rem, R)),
            op.last.eq(o_last),
            op.end.eq(o_end & o_last),
        ]
        for r in range(min(R, k)):
            m.d.comb += [op.entries[r].index.eq(o_ent[r][:ib]),
                         op.entries[r].value.eq(o_ent[r][ib:])]
        return m


class WinnerPicker(_Emitter):
    """Winners emitted one per cycle, the lowest remaining channel first.

    Taking a position registers the channel order of every pair of cells
    once (``k * (k - 1) / 2`` comparators), so each pick is a priority
    select; the position takes ``max(1, non-zero winners)`` cycles, the
    next one is taken when it is done.

    Parameters
    ----------
    k : int
        Winner cells per position.
    entries : int
        ``R``, entries per output beat (1 to 64).
    index_bits : int
        Width of a channel index.

    Members
    -------
    i : In(stream.Signature(winners_layout(k, index_bits)))
    o : Out(stream.Signature(sparse_layout(R, index_bits, signed(V))))
    """

    def elaborate(self, platform):
        m = Module()
        k, R, ib, vb = self.k, self.entries, self.index_bits, self.value_bits
        hold_v, hold_end = Signal(), Signal()
        h_idx = [Signal(ib, name=f"h_idx_{i}") for i in range(k)]
        h_x = [Signal(signed(vb), name=f"h_x_{i}") for i in range(k)]
        # lower[(i, j)], i < j: cell i's channel is lower than cell j's (the channels of
        # valid cells differ, so j's is lower when it is not; invalid cells never remain)
        lower = {(i, j): Signal(name=f"lower_{i}_{j}") for i in range(k) for j in range(i + 1, k)}
        rem = Signal(k)  # non-zero winners not yet emitted
        cells = self.i.payload.cells
        m.d.comb += self.i.ready.eq(~hold_v)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [hold_v.eq(1), hold_end.eq(self.i.payload.end)]
            m.d.sync += [h_idx[i].eq(cells[i].index) for i in range(k)]
            m.d.sync += [h_x[i].eq(cells[i].value) for i in range(k)]
            m.d.sync += [lower[i, j].eq(cells[i].index < cells[j].index) for i, j in lower]
            m.d.sync += rem.eq(Cat(*[cells[i].valid & (cells[i].value != 0) for i in range(k)]))

        # The lowest remaining channel: the cell that comes before every other remaining one.
        def before(i, j):
            return lower[i, j] if i < j else ~lower[j, i]

        sel = Cat(*[rem[i] & Cat(*[~rem[j] | before(i, j) for j in range(k) if j != i]).all()
                    for i in range(k)])
        sel_idx = onehot((sel[i], h_idx[i]) for i in range(k))
        sel_x = onehot((sel[i], h_x[i]) for i in range(k))
        rem_next = Signal(k)
        m.d.comb += rem_next.eq(rem & ~sel)

        # beat being filled, then the output register
        out = SerialOutput(m, self.o, R, k, ib, vb)
        entry = Cat(sel_idx, sel_x)
        done = Signal()  # this entry is the last: one winner remains (from rem, not sel)
        m.d.comb += done.eq((rem & (rem - 1)) == 0)
        with m.If(hold_v):
            with m.If(rem == 0):  # no non-zero winner: one empty beat
                with m.If(out.free):
                    out.send(0, [0] * R, 1, hold_end)
                    m.d.sync += hold_v.eq(0)
            with m.Elif(done | (out.b_cnt == R - 1)):  # the entry completes a beat
                with m.If(out.free):
                    out.send(out.b_cnt + 1, out.with_entry(entry), done, done & hold_end)
                    m.d.sync += [out.b_cnt.eq(0), rem.eq(rem_next)]
                    with m.If(done):
                        m.d.sync += hold_v.eq(0)
            with m.Else():
                out.append(entry)
                m.d.sync += rem.eq(rem_next)
        return m
