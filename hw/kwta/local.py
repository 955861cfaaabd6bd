"""Local k-WTA: the ``k`` winners over the channels of each position.

:class:`LocalKWTA` builds :class:`MergeLocalKWTA` (sorted beats merged into
``k`` cells) or, with one element per beat, :class:`InsertionLocalKWTA`
(each element inserted into ``k`` cells); both have the same interface.
See ``docs/kwta.md`` for the structure and measured timing.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..streams import dense_layout, sparse_layout
from ..util import bits, check_int
from ..util import value_bits as range_bits
from .common import (MAX_BOOST, MAX_KEY_BOOST, Keys, boost_dsps, check_boost, check_key_shift,
                     check_range, check_rescale, key_bits, rescaled)
from .order import WinnerPicker, WinnerSorter
from .sort import BeatSorter, MergeArray, SortedInsert

__all__ = ["LocalKWTA", "MergeLocalKWTA", "InsertionLocalKWTA"]


class LocalKWTA(wiring.Component):
    """k-winners-take-all over the ``C`` channels of each position of a map.

    Each group of the dense input (one position's channels, ``ceil(C / D)``
    beats) becomes one group of the sparse output: its ``k`` winners with a
    non-zero value, as ``(channel, value)`` in channel order. Any number of
    positions per frame; ``end`` is passed on to the frame's final beat.

    ``LocalKWTA(...)`` builds :class:`MergeLocalKWTA` when ``width > 1`` and
    :class:`InsertionLocalKWTA` when ``width == 1``.

    Parameters
    ----------
    channels : int
        ``C``, channels per position.
    k : int
        Winners per position, 1 to ``C`` (``k == C`` keeps every non-zero).
    width : int
        ``D``, elements per input beat.
    entries : int
        ``R``, entries per output beat (1 to 64).
    boost : sequence of int, optional
        Per-channel boost, ``C`` integers from 1 to 65535 (``2**17 - 1`` with ``key_shift``).
    max_winners : int, optional
        ``B``: the threshold tie rule, every key equal to the ``k``-th best
        also wins, up to ``B`` winners (``k`` to ``C``; ``B`` cells). None:
        exactly ``k`` winners.
    key_shift : int, optional
        Quantized keys: ``x * boost / 2**key_shift`` rounded half to even and
        saturated to int8 (0 to 32). None: the exact ``x * boost``.
    rescale : (int, int), optional
        ``(m, s)``: winners keep ``x * m / 2**s`` rounded half to even and
        saturated to ``out_range`` (a winner that becomes 0 is dropped). None:
        they keep ``x``.
    value_bits : int
        Signed bits of an input value (8, or 9 for int9 activations).
    key_range, out_range : (int, int)
        The clamp ranges of quantized keys and of rescaled values.
    dsp_width : int
        Signed input width of the part's multipliers (16 iCE40, 18 ECP5): a
        boost wider than one unsigned input takes two per key.

    Members
    -------
    i : In(stream.Signature(dense_layout(D, signed(value_bits))))
    o : Out(stream.Signature(sparse_layout(R, bits(C), signed(out_bits))))

    Raises
    ------
    ValueError
        A parameter is not an integer in its range, or ``boost`` has the
        wrong length or an out-of-range value.
    """

    def __new__(cls, channels=None, k=None, *, width: int = 8, entries: int = 8, boost=None,
                max_winners=None, key_shift=None, rescale=None, value_bits=8,
                key_range=(-128, 127), out_range=(-128, 127), dsp_width=18):
        design = (InsertionLocalKWTA if width == 1 else MergeLocalKWTA) if cls is LocalKWTA else cls
        return super().__new__(design, src_loc_at=1)

    def __init__(self, channels: int, k: int, *, width: int = 8, entries: int = 8, boost=None,
                 max_winners: int | None = None, key_shift: int | None = None,
                 rescale: tuple[int, int] | None = None, value_bits: int = 8,
                 key_range: tuple[int, int] = (-128, 127),
                 out_range: tuple[int, int] = (-128, 127), dsp_width: int = 18):
        check_int("channels", channels, 1)
        #: Signed input width of the part's multipliers (16 iCE40, 18 ECP5): DSPs per key.
        self.dsp_width = check_int("dsp_width", dsp_width, 16, 18)
        check_int("k", k, 1, channels)
        check_int("width (D)", width, 1)
        check_int("entries (R)", entries, 1, 64)
        if max_winners is not None:
            check_int("max_winners", max_winners, k, channels)
        self.channels, self.k, self.width, self.entries = channels, k, width, entries
        self.max_winners = max_winners
        #: Winner cells: ``k``, or ``max_winners`` with the threshold tie rule.
        self.cells = k if max_winners is None else max_winners
        self.key_shift = check_key_shift(key_shift)
        self.boost = check_boost(boost, channels, "channel",
                                 MAX_BOOST if self.key_shift is None else MAX_KEY_BOOST)
        self.rescale = check_rescale(rescale)
        self.value_bits = check_int("value_bits", value_bits, 2, 16)
        self.key_range = check_range("key_range", key_range)
        self.out_range = check_range("out_range", out_range)
        #: Signed bits of an output value (the rescaled range's with ``rescale``).
        self.out_bits = max(8, range_bits(*self.out_range)) if rescale is not None \
            else value_bits
        self.beats = -(-channels // width)
        self.index_bits = bits(channels)
        self.key_bits = key_bits(self.boost, self.key_shift, value_bits, self.key_range)
        self.in_layout = dense_layout(width, signed(value_bits))
        self.out_layout = sparse_layout(entries, self.index_bits, signed(self.out_bits))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    @property
    def dsps(self) -> int:
        """Multipliers of the keys ``x * boost`` (:func:`~.common.boost_dsps`)."""
        return boost_dsps(self.boost, self.width, self.dsp_width)

    @property
    def cycles_per_position(self) -> int:
        """Steady-state cycles per position."""
        raise NotImplementedError

    def _input_skid(self, m: Module, adv: Value) -> tuple[Value, data.View]:
        """The input beat the front takes when ``adv``: its valid and payload.

        A beat offered while the front holds waits in a register, and ``i.ready``
        is "no beat waiting", so the front's enable (from the emitter) does not
        run into the upstream FIFO's read enable in the same cycle (a routed
        gsc-cs build's critical path, 13.0 ns, ran from the first k-WTA's front
        through the Narrow into the pooled rows' FIFO). Still one beat a cycle:
        a waiting beat goes first, while the input is not ready.
        """
        s_valid = Signal()
        s_beat = Signal(self.i.payload.shape())
        valid = Signal()
        beat = Signal(self.i.payload.shape())
        m.d.comb += [self.i.ready.eq(~s_valid), valid.eq(s_valid | self.i.valid),
                     beat.eq(Mux(s_valid, s_beat.as_value(), self.i.payload.as_value()))]
        with m.If(~s_valid & self.i.valid & ~adv):
            m.d.sync += [s_valid.eq(1), s_beat.eq(self.i.payload)]
        with m.Elif(s_valid & adv):
            m.d.sync += s_valid.eq(0)
        return valid, beat

    def _emit_cells(self, m: Module, emit, cells, kb: int) -> None:
        """Connect the finished position's cells (best first) to the emitter: a cell past the
        ``k``-th wins only on a key equal to the ``k``-th's (the threshold rule)."""
        k = self.k
        for j in range(self.cells):
            rec = cells[j].as_value()
            m.d.comb += emit.i.payload.cells[j].as_value().eq(rec[kb:])
            if j >= k:
                m.d.comb += emit.i.payload.cells[j].valid.eq(
                    cells[j].valid & (rec[:kb] == cells[k - 1].as_value()[:kb]))


class MergeLocalKWTA(LocalKWTA):
    """Local k-WTA as a merge array: ``min(D, k)`` lanes merged into ``k`` cells per cycle.

    ::

        i (dense, D/beat) -> P0 register, boost ROM read -> P1 keys x * boost
          -> BeatSorter (rank, sort) -> MergeArray (PN, PM, k cells)
          -> WinnerSorter (hold, slot, out: channel order, R per beat)

    The whole front moves together; it stops only when the position
    finishing in the merge array finds the emitter full. One input beat per
    cycle with no bubble between positions (``ceil(C / D)`` cycles per
    position) as long as the output beats fit in that time. Parameters and
    members as :class:`LocalKWTA`; ``width`` at least 2.
    """

    def __init__(self, channels: int, k: int, *, width: int = 8, **params):
        super().__init__(channels, k, width=width, **params)
        if width == 1:
            raise ValueError(f"MergeLocalKWTA needs width (D) 2 or more, got {width!r}")

    @property
    def cycles_per_position(self) -> int:
        """Steady-state cycles per position: input-bound, ``ceil(C / D)``."""
        return self.beats

    def elaborate(self, platform):
        m = Module()
        C, k, D, R, B = self.channels, self.cells, self.width, self.entries, self.beats
        ib, kb = self.index_bits, self.key_bits
        keys = Keys(self.boost, D, B, self.key_shift, self.value_bits, self.key_range)
        vb, ob = self.value_bits, self.out_bits
        if keys.rom is not None:
            m.submodules.boost_rom = keys.rom
        m.submodules.sorter = sorter = BeatSorter(D, k, kb, ib, ob)
        m.submodules.merge = merge = MergeArray(sorter.kept, k, kb, ib, ob)
        m.submodules.emit = emit = WinnerSorter(k, R, ib, ob)

        adv = Signal()  # the whole front pipeline (P0..P3, merge) moves
        i_valid, p = self._input_skid(m, adv)

        # P0: input register; the boost ROM is read alongside
        bg = Signal(range(max(B, 2)))  # beat of the position being accepted
        with m.If(i_valid & adv):
            with m.If(p.last):
                m.d.sync += bg.eq(0)
            with m.Elif(bg != B - 1):
                m.d.sync += bg.eq(bg + 1)
        v0, last0, end0 = Signal(), Signal(), Signal()
        bg0 = Signal.like(bg)
        x0 = [Signal(signed(vb), name=f"x0_{d}") for d in range(D)]
        blanes = keys.lanes(m, bg, adv)
        with m.If(adv):
            m.d.sync += v0.eq(i_valid)
            with m.If(i_valid):
                m.d.sync += [bg0.eq(bg), last0.eq(p.last), end0.eq(p.end)]
                m.d.sync += [x0[d].eq(p.data[d]) for d in range(D)]

        # P1: keys
        v1, last1, end1, first1 = Signal(), Signal(), Signal(), Signal()
        key1 = [Signal(kb, name=f"key1_{d}") for d in range(D)]
        idx1 = [Signal(ib, name=f"idx1_{d}") for d in range(D)]
        x1 = [Signal(signed(ob), name=f"x1_{d}") for d in range(D)]
        lv1 = [Signal(name=f"lv1_{d}") for d in range(D)]
        with m.If(adv):
            m.d.sync += [v1.eq(v0), last1.eq(last0), end1.eq(end0), first1.eq(bg0 == 0)]
            for d in range(D):
                m.d.sync += [
                    key1[d].eq(keys.ukey(x0[d], None if blanes is None else blanes[d])),
                    idx1[d].eq(bg0 * D + d),
                    x1[d].eq(rescaled(x0[d], self.rescale, self.out_range)),
                    lv1[d].eq(bg0 * D + d < C),
                ]

        # sort, merge, emit
        m.d.comb += [sorter.en.eq(adv), sorter.i.valid.eq(v1), sorter.i.first.eq(first1),
                     sorter.i.last.eq(last1), sorter.i.end.eq(end1)]
        m.d.comb += [sorter.i.lanes[d].as_value().eq(Cat(key1[d], idx1[d], x1[d], lv1[d]))
                     for d in range(D)]
        m.d.comb += [merge.en.eq(adv), merge.i.eq(sorter.o)]
        m.d.comb += [emit.i.valid.eq(merge.o.valid & merge.o.last), emit.i.payload.end.eq(merge.o.end)]
        self._emit_cells(m, emit, merge.o.cells, kb)
        m.d.comb += adv.eq(~(merge.o.valid & merge.o.last) | emit.i.ready)
        wiring.connect(m, emit.o, wiring.flipped(self.o))
        return m


class InsertionLocalKWTA(LocalKWTA):
    """Local k-WTA for one element per beat: insertion into ``k`` sorted cells.

    ::

        i (dense, 1/beat) -> P0 register, boost ROM read -> P1 key x * boost
          -> SortedInsert (k cells) -> WinnerPicker (lowest channel per cycle)

    The picker takes the finished position's cells the cycle after its last
    insertion, while the next position's first element goes in: the
    insertion logic then drives only the cells (on iCE40 a LUT and its
    flip-flop share a cell only when the LUT drives nothing else).
    ``max(C, k + 2)`` cycles per position. Parameters and members as
    :class:`LocalKWTA`; ``width`` must be 1.
    """

    def __init__(self, channels: int, k: int, *, width: int = 1, **params):
        super().__init__(channels, k, width=width, **params)
        if width != 1:
            raise ValueError(f"InsertionLocalKWTA needs width (D) 1, got {width!r}")

    @property
    def cycles_per_position(self) -> int:
        """Steady-state cycles per position: at least ``cells + 2`` (the hold load, then
        one winner per cycle)."""
        return max(self.beats, self.cells + 2)

    def elaborate(self, platform):
        m = Module()
        C, k, R = self.channels, self.cells, self.entries
        ib, kb = self.index_bits, self.key_bits
        keys = Keys(self.boost, 1, C, self.key_shift, self.value_bits, self.key_range)
        vb, ob = self.value_bits, self.out_bits
        if keys.rom is not None:
            m.submodules.boost_rom = keys.rom
        m.submodules.cells = cells = SortedInsert(k, kb, ib, ob)
        m.submodules.emit = emit = WinnerPicker(k, R, ib, ob)
        adv = Signal()
        i_valid, p = self._input_skid(m, adv)

        # P0: input register; the channel's boost is read alongside
        ch = Signal(range(max(C, 2)))  # channel of the element being accepted
        with m.If(i_valid & adv):
            m.d.sync += ch.eq(Mux(p.last | (ch == C - 1), 0, ch + 1))
        v0, last0, end0 = Signal(), Signal(), Signal()
        ch0 = Signal.like(ch)
        x0 = Signal(signed(vb))
        blane = keys.lanes(m, ch, adv)
        with m.If(adv):
            m.d.sync += v0.eq(i_valid)
            with m.If(i_valid):
                m.d.sync += [ch0.eq(ch), x0.eq(p.data[0]), last0.eq(p.last), end0.eq(p.end)]

        # P1: key
        v1, last1, end1, first1 = Signal(), Signal(), Signal(), Signal()
        key1 = Signal(kb)
        idx1 = Signal(ib)
        x1 = Signal(signed(ob))
        with m.If(adv):
            m.d.sync += [v1.eq(v0), last1.eq(last0), end1.eq(end0), first1.eq(ch0 == 0),
                         key1.eq(keys.ukey(x0, None if blane is None else blane[0])),
                         idx1.eq(ch0), x1.eq(rescaled(x0, self.rescale, self.out_range))]

        # cells: the best k so far; the picker takes them the cycle after the last insertion
        pend, pend_end = Signal(), Signal()
        m.d.comb += [cells.en.eq(adv & v1), cells.i.key.eq(key1), cells.i.index.eq(idx1),
                     cells.i.value.eq(x1), cells.i.first.eq(first1)]
        m.d.comb += adv.eq(~(v1 & last1 & (~emit.i.ready | pend)))
        m.d.sync += pend.eq(adv & v1 & last1)
        with m.If(adv & v1 & last1):
            m.d.sync += pend_end.eq(end1)
        m.d.comb += [emit.i.valid.eq(pend), emit.i.payload.end.eq(pend_end)]
        self._emit_cells(m, emit, cells.cells, kb)
        wiring.connect(m, emit.o, wiring.flipped(self.o))
        return m
