"""Sorting parts of the local k-WTA: a beat's lanes sorted, the merge of sorted beats into
``k`` cells, and the one-element insertion into ``k`` cells.

A record is a key, a channel index, a value and a valid bit
(:func:`record_layout`); records are ordered by key, descending, ties to
the lower channel, and an invalid record comes after every valid one.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..util import bits, onehot, popcount

__all__ = ["record_layout", "beat_layout", "BeatSorter", "MergeArray", "SortedInsert"]


def record_layout(key_bits: int, index_bits: int, value_bits: int = 8) -> data.StructLayout:
    """A record: offset-binary ``key``, channel ``index``, ``value`` and ``valid``."""
    return data.StructLayout({"key": unsigned(key_bits), "index": unsigned(index_bits),
                              "value": signed(value_bits), "valid": unsigned(1)})


def beat_layout(lanes: int, key_bits: int, index_bits: int,
                value_bits: int = 8) -> data.StructLayout:
    """A beat of ``lanes`` records with its flags: ``valid`` (a beat is there), ``first``
    and ``last`` beat of its position, ``end`` of the frame."""
    return data.StructLayout({"lanes": data.ArrayLayout(record_layout(key_bits, index_bits,
                                                                      value_bits), lanes),
                              "valid": unsigned(1), "first": unsigned(1), "last": unsigned(1),
                              "end": unsigned(1)})


class BeatSorter(wiring.Component):
    """The ``D`` records of a beat sorted best first, two pipeline stages.

    The first stage ranks each lane against the others (a lane beats a
    higher lane on an equal key); the second places the records by rank and
    keeps the best ``min(D, k)``, the only ones that can enter the top
    ``k``. Both stages move when ``en`` is high.

    Parameters
    ----------
    width : int
        ``D``, records per beat.
    k : int
        Records kept from a beat: ``min(D, k)``.
    key_bits, index_bits : int
        Record field widths.

    Members
    -------
    en : In(1)
        The pipeline moves.
    i : In(beat_layout(D, key_bits, index_bits))
    o : Out(beat_layout(min(D, k), key_bits, index_bits))
        ``i`` two moves later, its lanes sorted.
    """

    def __init__(self, width: int, k: int, key_bits: int, index_bits: int,
                 value_bits: int = 8):
        self.width, self.k, self.kb, self.ib = width, k, key_bits, index_bits
        self.kept = min(width, k)
        super().__init__({
            "en": In(1),
            "i": In(beat_layout(width, key_bits, index_bits, value_bits)),
            "o": Out(beat_layout(self.kept, key_bits, index_bits, value_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        D, Dm = self.width, self.kept
        lanes = self.i.lanes
        rec1 = [lanes[d].as_value() for d in range(D)]
        rec_w = len(rec1[0])
        key1 = [lanes[d].key for d in range(D)]
        lv1 = [lanes[d].valid for d in range(D)]

        # P2: rank of each lane within its beat
        def beats(a, b):  # lane a (lower channel) ranks before lane b
            return lv1[a] & (~lv1[b] | (key1[a] >= key1[b]))

        wins = {(a, b): beats(a, b) for a in range(D) for b in range(a + 1, D)}
        rank2 = [Signal(bits(D), name=f"rank2_{d}") for d in range(D)]
        rec2 = [Signal(rec_w, name=f"rec2_{d}") for d in range(D)]
        v2, last2, end2, first2 = Signal(), Signal(), Signal(), Signal()
        with m.If(self.en):
            m.d.sync += [v2.eq(self.i.valid), last2.eq(self.i.last), end2.eq(self.i.end),
                         first2.eq(self.i.first)]
            for t in range(D):
                above = [wins[(a, t)] for a in range(t)] + [~wins[(t, b)] for b in range(t + 1, D)]
                m.d.sync += [rank2[t].eq(popcount(above)), rec2[t].eq(rec1[t])]

        # P3: the beat sorted best first
        o = self.o
        with m.If(self.en):
            m.d.sync += [o.valid.eq(v2), o.last.eq(last2), o.end.eq(end2), o.first.eq(first2)]
            m.d.sync += [o.lanes[j].as_value().eq(onehot((rank2[t] == j, rec2[t])
                                                         for t in range(D)))
                         for j in range(Dm)]
        return m


class MergeArray(wiring.Component):
    """``k`` cells sorted best first, into which a sorted beat is merged per move.

    A beat passes two registers: PN (next) and PM (being merged). The
    merge is a merge of two sorted lists: with ``g[i][t]`` = "lane ``t``
    beats cell ``i``" (strictly larger key: cells hold lower channels),
    cell ``i`` moves down by the number of lanes that beat it and lane
    ``t`` by the number of cells that beat it; both counts are thermometer
    codes, so each new cell is a one-hot select among ``(j + 1) + min(j +
    1, D)`` candidates decided by two ``g`` bits. ``g`` is a register
    computed one beat ahead: PN's lanes are compared with the cells and
    with PM's lanes, and every new cell selects its comparison bits along
    with its record (``k * min(D, k) + min(D, k)**2`` comparators in all).
    The first beat of a position merges into empty cells.

    Parameters
    ----------
    lanes : int
        Records per sorted beat, ``min(D, k)``.
    k : int
        Cells.
    key_bits, index_bits : int
        Record field widths.

    Members
    -------
    en : In(1)
        The pipeline moves: PN and PM load, the cells take ``o.cells``.
    i : In(beat_layout(lanes, key_bits, index_bits))
        A sorted beat (:class:`BeatSorter`), taken into PN.
    o : Out(StructLayout)
        ``cells``: the cells with PM's beat merged in (combinational);
        ``valid``, ``last``, ``end``: PM's flags. With ``valid`` and
        ``last``, ``cells`` are the position's winners.
    """

    def __init__(self, lanes: int, k: int, key_bits: int, index_bits: int,
                 value_bits: int = 8):
        self.lanes, self.k, self.kb, self.ib = lanes, k, key_bits, index_bits
        rec = record_layout(key_bits, index_bits, value_bits)
        super().__init__({
            "en": In(1),
            "i": In(beat_layout(lanes, key_bits, index_bits, value_bits)),
            "o": Out(data.StructLayout({"cells": data.ArrayLayout(rec, k), "valid": unsigned(1),
                                        "last": unsigned(1), "end": unsigned(1)})),
        })

    def elaborate(self, platform):
        m = Module()
        Dm, k, kb = self.lanes, self.k, self.kb
        rec3 = [self.i.lanes[t].as_value() for t in range(Dm)]
        rec_w = len(rec3[0])

        def key(rec):
            return rec[:kb]

        def valid(rec):
            return rec[rec_w - 1]

        # g[i][t] (a register): lane t of PM beats cell i (cells hold lower
        # channels, so ties go to the cell; an empty cell loses). Comparators
        # work one beat ahead: PN's lanes against the cells (in the loop) and
        # against PM's lanes (registered as the beats enter PN and PM); each new
        # cell selects its comparison bits with its record, so the loop holds
        # one select and one comparator, no popcount.
        recn = [Signal(rec_w, name=f"recn_{t}") for t in range(Dm)]
        vn, lastn, endn, firstn = Signal(), Signal(), Signal(), Signal()
        recm = [Signal(rec_w, name=f"recm_{t}") for t in range(Dm)]
        vm, lastm, endm, firstm = Signal(), Signal(), Signal(), Signal()
        c_lane = [Signal(Dm, name=f"c_lane_{u}") for u in range(Dm)]  # [PM lane][PN lane]
        with m.If(self.en):
            m.d.sync += [vn.eq(self.i.valid), lastn.eq(self.i.last), endn.eq(self.i.end),
                         firstn.eq(self.i.first),
                         vm.eq(vn), lastm.eq(lastn), endm.eq(endn), firstm.eq(firstn)]
            m.d.sync += [recn[t].eq(rec3[t]) for t in range(Dm)]
            m.d.sync += [recm[t].eq(recn[t]) for t in range(Dm)]
            m.d.sync += [c_lane[u].eq(Cat(*[key(rec3[t]) > key(recn[u]) for t in range(Dm)]))
                         for u in range(Dm)]
        cells = [Signal(rec_w, name=f"cell_{i}") for i in range(k)]
        g = [[Signal(name=f"g_{i}_{t}") for t in range(Dm)] for i in range(k)]
        bn_key = [key(r) for r in recn]
        bn_valid = [valid(r) for r in recn]
        c_cell = [Cat(*[bn_key[t] > key(cells[i]) for t in range(Dm)]) for i in range(k)]
        a_valid = [valid(c) & ~(firstm & vm) for c in cells]
        a_rec = [Cat(c[:rec_w - 1], a_valid[i], c_cell[i]) for i, c in enumerate(cells)]
        b_rec = [Cat(recm[u], c_lane[u]) for u in range(Dm)]
        merged = []
        merged_cmp = []
        for j in range(k):
            cand = []
            for i in range(j + 1):  # cell i moves down by the mm lanes that beat it
                mm = j - i
                if mm > Dm:
                    continue
                c = vm  # without a beat in PM every cell stays
                if mm > 0:
                    c = c & g[i][mm - 1]
                if mm < Dm:
                    c = c & ~g[i][mm]
                if mm == 0:
                    c = c | ~vm
                cand.append((c, a_rec[i]))
            for t in range(min(j + 1, Dm)):  # lane t moves down by the n cells that beat it
                n = j - t
                c = vm & g[n][t]
                if n > 0:
                    c = c & ~g[n - 1][t]
                cand.append((c, b_rec[t]))
            sel = Signal(rec_w + Dm, name=f"merged_{j}")
            m.d.comb += sel.eq(onehot(cand))
            merged.append(sel[:rec_w])
            merged_cmp.append(sel[rec_w:])

        def g_next(valid, cmp):  # lane t of PN beats a cell holding (valid, cmp bits)
            return [bn_valid[t] & (~(valid & ~firstn) | cmp[t]) for t in range(Dm)]

        with m.If(self.en):
            m.d.sync += [cells[i].eq(merged[i]) for i in range(k)]
            for i in range(k):
                m.d.sync += [g[i][t].eq(b) for t, b in
                             enumerate(g_next(valid(merged[i]), merged_cmp[i]))]
        m.d.comb += [self.o.valid.eq(vm), self.o.last.eq(lastm), self.o.end.eq(endm)]
        m.d.comb += [self.o.cells[j].as_value().eq(merged[j]) for j in range(k)]
        return m


class SortedInsert(wiring.Component):
    """``k`` cells sorted best first, into which one record is inserted per move.

    Each cell keeps its place when its key is at least the new one (it
    holds a lower channel, so it wins ties), takes the new record when it
    is the first cell that does not, else takes the cell above it: ``k``
    comparators, no merge network. A record marked ``first`` (the first
    of a position) is inserted into empty cells.

    Parameters
    ----------
    k : int
        Cells.
    key_bits, index_bits : int
        Record field widths.

    Members
    -------
    en : In(1)
        Insert ``i``.
    i : In(StructLayout)
        ``key``, ``index``, ``value`` of the new record; ``first``: start a
        position.
    cells : Out(ArrayLayout(record_layout(key_bits, index_bits), k))
        The cells (registers).
    """

    def __init__(self, k: int, key_bits: int, index_bits: int, value_bits: int = 8):
        self.k, self.kb, self.ib = k, key_bits, index_bits
        super().__init__({
            "en": In(1),
            "i": In(data.StructLayout({"key": unsigned(key_bits), "index": unsigned(index_bits),
                                       "value": signed(value_bits), "first": unsigned(1)})),
            "cells": Out(data.ArrayLayout(record_layout(key_bits, index_bits, value_bits), k)),
        })

    def elaborate(self, platform):
        m = Module()
        k, kb = self.k, self.kb
        cells = [self.cells[i].as_value() for i in range(k)]
        rec_w = len(cells[0])
        valid = [c[rec_w - 1] & ~self.i.first for c in cells]  # a new position starts empty
        # ge[i]: cell i keeps its place (it holds a lower channel, so it wins ties)
        ge = [valid[i] & (cells[i][:kb] >= self.i.key) for i in range(k)]
        new = Cat(self.i.key, self.i.index, self.i.value, Const(1, 1))
        inserted = []
        for i in range(k):
            below = Cat(cells[i - 1][:rec_w - 1], valid[i - 1]) if i else new
            take_new = ~ge[i] & (ge[i - 1] if i else Const(1, 1))
            inserted.append(Mux(ge[i], Cat(cells[i][:rec_w - 1], valid[i]),
                                Mux(take_new, new, below)))
        with m.If(self.en):
            m.d.sync += [cells[i].eq(inserted[i]) for i in range(k)]
        return m
