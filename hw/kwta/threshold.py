"""Parts of the histogram global k-WTA: the frame writer and reader, the lane
histograms, the threshold scan, the threshold compare and the winner packer.

Keys are offset-binary (:func:`~.common.offset_key`) and zero-extended to
``DB * P`` bits, ``P`` radix digits of ``DB`` bits (8 in hardware: 256
bins); the top digit is bits ``DB * P - DB`` and up. Block RAM outputs (frame buffer, boost ROM,
histograms) are registered before use.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..streams import dense_layout, entry_layout, sparse_layout
from ..util import bits, onehot, popcount
from .common import offset_key, rescaled

__all__ = ["lane_layout", "FrameWriter", "FrameReader", "LaneHistograms", "ThresholdScan",
           "ThresholdCompare", "WinnerPacker"]


def lane_layout(key_width: int, value_bits: int = 8) -> data.StructLayout:
    """One lane of a word being read: ``key``, ``value``, ``valid`` (an element of the group)."""
    return data.StructLayout({"key": unsigned(key_width), "value": signed(value_bits),
                              "valid": unsigned(1)})


def _padded_key(x, b, kb: int, KP: int, key_shift: int | None, key_range=(-128, 127)):
    u = offset_key(x, b, kb, key_shift, key_range)
    return Cat(u, Const(0, KP - kb)) if KP > kb else u


class FrameWriter(wiring.Component):
    """A frame into one half of the frame buffer, and the keys of its words.

    One beat a cycle while ``filled`` is low; the frame's ``end`` beat sets
    ``filled`` (the frame owns the histograms until ``release``) and
    switches halves. Each word's keys follow three cycles after the beat
    (boost ROM read, registered, multiplied).

    Parameters
    ----------
    words, beats, width, group : int
        ``W`` words per frame, ``beats`` per group, ``D`` lanes, ``G`` elements per group.
    key_bits, boost_bits : int
        Key width ``kb``; width of a lane's boost (0: no boost).
    digit_bits : int
        ``DB``, bits of a radix digit: keys are padded to ``DB * P`` bits.

    Members
    -------
    i : In(stream.Signature(dense_layout(D, signed(value_bits))))
    buf_addr, buf_data, buf_en : Out
        The frame buffer's write port (``2 * W`` words, half ``slot`` first).
    boost_addr : Out
        Beat within its group, read from the boost ROM the same cycle.
    boost : In(D * boost_bits)
        The ROM's data, one cycle after ``boost_addr``.
    keys_valid : Out(1)
    keys : Out(ArrayLayout(StructLayout({"key", "valid"}), D))
        A written word's keys (``DB * P`` bits) and lane valid bits.
    busy : Out(1)
        Keys are still in flight.
    filled, slot : Out(1)
        A whole frame is written, in buffer half ``slot``.
    release : In(1)
        The frame's histogram work is done: take the next frame.
    """

    def __init__(self, words: int, beats: int, width: int, group: int, key_bits: int,
                 boost_bits: int, key_shift: int | None = None, value_bits: int = 8,
                 key_range: tuple[int, int] = (-128, 127), *, digit_bits: int = 8):
        self.W, self.BG, self.D, self.G = words, beats, width, group
        self.kb, self.bb, self.key_shift = key_bits, boost_bits, key_shift
        self.vb, self.key_range = value_bits, key_range
        self.KP = digit_bits * -(-key_bits // digit_bits)
        super().__init__({
            "i": In(stream.Signature(dense_layout(width, signed(value_bits)))),
            "buf_addr": Out(range(2 * words)), "buf_data": Out(value_bits * width),
            "buf_en": Out(1),
            "boost_addr": Out(range(max(beats, 2))), "boost": In(max(1, width * boost_bits)),
            "keys_valid": Out(1),
            "keys": Out(data.ArrayLayout(data.StructLayout({"key": unsigned(self.KP),
                                                            "valid": unsigned(1)}), width)),
            "busy": Out(1), "filled": Out(1), "slot": Out(1), "release": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        W, BG, D, G, bb = self.W, self.BG, self.D, self.G, self.bb
        filled = self.filled
        wslot = Signal()
        wword = Signal(range(max(W, 2)))
        wbg = self.boost_addr
        take = Signal()
        p = self.i.payload
        m.d.comb += [self.i.ready.eq(~filled), take.eq(self.i.valid & ~filled)]
        m.d.comb += [self.buf_addr.eq(wslot * W + wword), self.buf_data.eq(p.data.as_value()),
                     self.buf_en.eq(take)]
        with m.If(take):
            with m.If(p.end):
                m.d.sync += [wword.eq(0), wbg.eq(0), wslot.eq(~wslot), self.slot.eq(wslot),
                             filled.eq(1)]
            with m.Else():
                m.d.sync += wword.eq(wword + 1)
                with m.If(p.last):
                    m.d.sync += wbg.eq(0)
                with m.Elif(wbg != BG - 1):
                    m.d.sync += wbg.eq(wbg + 1)
        with m.If(self.release):
            m.d.sync += filled.eq(0)
        w0_v = Signal()
        w0_bg = Signal.like(wbg)
        w0_x = [Signal(signed(self.vb), name=f"w0_x{d}") for d in range(D)]
        m.d.sync += w0_v.eq(take)
        with m.If(take):
            m.d.sync += [w0_bg.eq(wbg)] + [w0_x[d].eq(p.data[d]) for d in range(D)]
        # WB: register the boost ROM output (block RAM) before the multipliers
        wb_v = Signal()
        wb_bg = Signal.like(wbg)
        wb_x = [Signal(signed(self.vb), name=f"wb_x{d}") for d in range(D)]
        wb_b = None if not bb else [Signal(bb, name=f"wb_b{d}") for d in range(D)]
        m.d.sync += [wb_v.eq(w0_v), wb_bg.eq(w0_bg)] + [wb_x[d].eq(w0_x[d]) for d in range(D)]
        if wb_b is not None:
            m.d.sync += [wb_b[d].eq(self.boost[d * bb:(d + 1) * bb]) for d in range(D)]
        m.d.sync += self.keys_valid.eq(wb_v)
        for d in range(D):
            m.d.sync += [self.keys[d].key.eq(_padded_key(wb_x[d], None if wb_b is None else wb_b[d],
                                                         self.kb, self.KP, self.key_shift,
                                                         self.key_range)),
                         self.keys[d].valid.eq(wb_bg * D + d < G)]
        m.d.comb += self.busy.eq(w0_v | wb_v | self.keys_valid)
        return m


class FrameReader(wiring.Component):
    """One pass over a stored frame: its words' keys and values, in order.

    ``start`` begins a pass over buffer half ``slot``; every stage moves
    when ``en`` is high. A word's lanes come out three moves after its
    address (buffer read, registered with the boost, multiplied).

    Parameters
    ----------
    words, beats, width, group : int
        ``W`` words per frame, ``beats`` per group, ``D`` lanes, ``G`` elements per group.
    key_bits, boost_bits : int
        Key width ``kb``; width of a lane's boost (0: no boost).
    digit_bits : int
        ``DB``, bits of a radix digit: keys are padded to ``DB * P`` bits.

    Members
    -------
    start, slot : In(1)
    en : In(1)
    buf_addr : Out
        The frame buffer's read address, read when ``en``.
    buf_data : In(8 * D)
    boost_addr : Out
        Beat within its group, read from the boost ROM when ``en``.
    boost : In(D * boost_bits)
    o : Out(StructLayout)
        ``valid``; ``glast`` (the group's last word), ``fend`` (the
        frame's), ``bg`` (beat within the group), ``lanes``
        (:func:`lane_layout`).
    busy : Out(1)
        The pass is not over.
    """

    def __init__(self, words: int, beats: int, width: int, group: int, key_bits: int,
                 boost_bits: int, key_shift: int | None = None,
                 rescale: tuple[int, int] | None = None, value_bits: int = 8,
                 key_range: tuple[int, int] = (-128, 127),
                 out_range: tuple[int, int] = (-128, 127), out_bits: int = 8, *,
                 digit_bits: int = 8):
        self.W, self.BG, self.D, self.G = words, beats, width, group
        self.kb, self.bb, self.key_shift, self.rescale = key_bits, boost_bits, key_shift, rescale
        self.vb, self.ob, self.key_range, self.out_range = (value_bits, out_bits, key_range,
                                                            out_range)
        self.KP = digit_bits * -(-key_bits // digit_bits)
        super().__init__({
            "start": In(1), "slot": In(1), "en": In(1),
            "buf_addr": Out(range(2 * words)), "buf_data": In(value_bits * width),
            "boost_addr": Out(range(max(beats, 2))), "boost": In(max(1, width * boost_bits)),
            "o": Out(data.StructLayout({
                "valid": unsigned(1), "glast": unsigned(1), "fend": unsigned(1),
                "bg": range(max(beats, 2)),
                "lanes": data.ArrayLayout(lane_layout(self.KP, out_bits), width)})),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        W, BG, D, G, bb = self.W, self.BG, self.D, self.G, self.bb
        vb = self.vb
        rd_active = Signal()
        rd_slot = Signal()
        rd_word = Signal(range(max(W, 2)))
        rd_bg = self.boost_addr
        adv_r = self.en
        m.d.comb += self.buf_addr.eq(rd_slot * W + rd_word)
        r1_v, r1_glast, r1_fend = Signal(), Signal(), Signal()
        r1_bg = Signal.like(rd_bg)
        with m.If(adv_r):
            m.d.sync += [r1_v.eq(rd_active), r1_bg.eq(rd_bg), r1_glast.eq(rd_bg == BG - 1),
                         r1_fend.eq(rd_word == W - 1)]
            with m.If(rd_active):
                with m.If(rd_word == W - 1):
                    m.d.sync += [rd_active.eq(0), rd_word.eq(0), rd_bg.eq(0)]
                with m.Else():
                    m.d.sync += [rd_word.eq(rd_word + 1),
                                 rd_bg.eq(Mux(rd_bg == BG - 1, 0, rd_bg + 1))]
        with m.If(self.start):
            m.d.sync += [rd_active.eq(1), rd_slot.eq(self.slot), rd_word.eq(0), rd_bg.eq(0)]
        # R1B: register the buffer and boost ROM outputs (block RAM) before the multipliers
        rb_v, rb_glast, rb_fend = Signal(), Signal(), Signal()
        rb_bg = Signal.like(rd_bg)
        rb_x = [Signal(signed(vb), name=f"rb_x{d}") for d in range(D)]
        rb_b = None if not bb else [Signal(bb, name=f"rb_b{d}") for d in range(D)]
        with m.If(adv_r):
            m.d.sync += [rb_v.eq(r1_v), rb_bg.eq(r1_bg), rb_glast.eq(r1_glast),
                         rb_fend.eq(r1_fend)]
            m.d.sync += [rb_x[d].eq(self.buf_data[vb * d:vb * d + vb]) for d in range(D)]
            if rb_b is not None:
                m.d.sync += [rb_b[d].eq(self.boost[d * bb:(d + 1) * bb]) for d in range(D)]
        o = self.o
        with m.If(adv_r):
            m.d.sync += [o.valid.eq(rb_v), o.bg.eq(rb_bg), o.glast.eq(rb_glast),
                         o.fend.eq(rb_fend)]
            for d in range(D):
                m.d.sync += [o.lanes[d].key.eq(_padded_key(rb_x[d], None if rb_b is None
                                                           else rb_b[d], self.kb, self.KP,
                                                           self.key_shift, self.key_range)),
                             o.lanes[d].value.eq(rescaled(rb_x[d], self.rescale,
                                                          self.out_range)),
                             o.lanes[d].valid.eq(rb_bg * D + d < G)]
        m.d.comb += self.busy.eq(rd_active | r1_v | rb_v | o.valid)
        return m


class LaneHistograms(wiring.Component):
    """``D`` histograms of ``2**digit_bits`` bins (256), one per lane, counted and scanned.

    Counting is a read-modify-write, block RAM output registered: read at
    H0, data registered at H1, bin + 1 written at H2. The two previous
    writes are not yet visible to a read, so their counts are forwarded:
    repeated bins on consecutive cycles need no stall. While ``scanning``
    the read address is ``scan_bin`` and the write clears ``clear_bin``.

    Parameters
    ----------
    width : int
        ``D``, lanes.
    count_bits : int
        Width of a bin.
    digit_bits : int
        ``DB``, bits of a digit (a bin's address).

    Members
    -------
    valid : In(1)
        A word's digits come in.
    digits : In(ArrayLayout(DB, D))
    incs : In(D)
        Lanes whose bin is counted.
    scanning, scan_bin, clear_bin, clear : In
        The scan's read address, and the bin it clears.
    counts : Out(ArrayLayout(count_bits, D))
        Each lane's bin read the cycle before.
    busy : Out(1)
        Counts are in flight.
    """

    def __init__(self, width: int, count_bits: int, digit_bits: int = 8):
        self.D, self.cb, self.DB = width, count_bits, digit_bits
        super().__init__({
            "valid": In(1), "digits": In(data.ArrayLayout(digit_bits, width)),
            "incs": In(width), "scanning": In(1), "scan_bin": In(digit_bits),
            "clear_bin": In(digit_bits), "clear": In(1),
            "counts": Out(data.ArrayLayout(count_bits, width)), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        D, cb, DB = self.D, self.cb, self.DB
        h1_v, h2_v = Signal(), Signal()
        h1_addr = [Signal(DB, name=f"h1_addr{d}") for d in range(D)]
        h1_inc = [Signal(name=f"h1_inc{d}") for d in range(D)]
        h2_addr = [Signal(DB, name=f"h2_addr{d}") for d in range(D)]
        h2_inc = [Signal(name=f"h2_inc{d}") for d in range(D)]
        h2_data = [Signal(cb, name=f"h2_data{d}") for d in range(D)]
        h2_new = [Signal(cb, name=f"h2_new{d}") for d in range(D)]
        p1_addr = [Signal(DB, name=f"p1_addr{d}") for d in range(D)]
        p1_inc = [Signal(name=f"p1_inc{d}") for d in range(D)]
        p1_val = [Signal(cb, name=f"p1_val{d}") for d in range(D)]
        p2_addr = [Signal(DB, name=f"p2_addr{d}") for d in range(D)]
        p2_inc = [Signal(name=f"p2_inc{d}") for d in range(D)]
        p2_val = [Signal(cb, name=f"p2_val{d}") for d in range(D)]
        m.d.sync += [h1_v.eq(self.valid), h2_v.eq(h1_v)]
        m.d.comb += self.busy.eq(h1_v | h2_v)
        scanning = self.scanning
        for d in range(D):
            h = Memory(shape=unsigned(cb), depth=1 << DB, init=[])
            m.submodules[f"hist{d}"] = h
            hist_w, hist_r = h.write_port(), h.read_port()
            m.d.sync += [h1_addr[d].eq(self.digits[d]), h1_inc[d].eq(self.valid & self.incs[d]),
                         h2_addr[d].eq(h1_addr[d]), h2_inc[d].eq(h1_inc[d]),
                         h2_data[d].eq(hist_r.data),
                         p1_addr[d].eq(h2_addr[d]), p1_inc[d].eq(h2_inc[d]),
                         p1_val[d].eq(h2_new[d]),
                         p2_addr[d].eq(p1_addr[d]), p2_inc[d].eq(p1_inc[d]),
                         p2_val[d].eq(p1_val[d])]
            base = Mux(p1_inc[d] & (p1_addr[d] == h2_addr[d]), p1_val[d],
                       Mux(p2_inc[d] & (p2_addr[d] == h2_addr[d]), p2_val[d], h2_data[d]))
            m.d.comb += h2_new[d].eq(base + 1)
            m.d.comb += [
                hist_r.addr.eq(Mux(scanning, self.scan_bin, self.digits[d])),
                hist_r.en.eq(1),
                hist_w.addr.eq(Mux(scanning, self.clear_bin, h2_addr[d])),
                hist_w.data.eq(Mux(scanning, 0, h2_new[d])),
                hist_w.en.eq(Mux(scanning, self.clear, h2_inc[d])),
                self.counts[d].eq(hist_r.data),
            ]
        return m


class ThresholdScan(wiring.Component):
    """The threshold digit: bins read from the top down until ``need`` keys are counted.

    ``start`` issues the ``2**DB`` bins, the top one first, one per cycle; each bin's
    lane counts (``counts``, one cycle after ``bin``) are registered, then
    summed. The first bin where the running count reaches ``need`` is
    ``digit``, and ``above`` the count of the bins before it. Every bin is
    cleared (``clear`` at ``clear_bin``) the cycle after it is read.
    ``done`` is high the cycle bin 0's sum is seen; ``scanning`` is low
    from the next cycle.

    Parameters
    ----------
    width : int
        ``D``, lanes.
    count_bits, total_bits : int
        Widths of a lane's bin and of a count of keys.
    digit_bits : int
        ``DB``, bits of a digit.

    Members
    -------
    start : In(1)
    need : In(total_bits)
    counts : In(ArrayLayout(count_bits, D))
    bin, clear_bin : Out(DB)
    clear, scanning, done : Out(1)
    digit : Out(DB)
    above : Out(total_bits)
    """

    def __init__(self, width: int, count_bits: int, total_bits: int, digit_bits: int = 8):
        self.D, self.cb, self.tb, self.DB = width, count_bits, total_bits, digit_bits
        super().__init__({
            "start": In(1), "need": In(total_bits),
            "counts": In(data.ArrayLayout(count_bits, width)),
            "bin": Out(digit_bits), "clear_bin": Out(digit_bits), "clear": Out(1),
            "scanning": Out(1), "done": Out(1), "digit": Out(digit_bits),
            "above": Out(total_bits),
        })

    def elaborate(self, platform):
        m = Module()
        D, cb, cnt = self.D, self.cb, self.tb
        sc_issue = Signal()
        sc_bin = self.bin
        sc1_v, scb_v, sc2_v = self.clear, Signal(), Signal()
        sc1_bin, scb_bin, sc2_bin = self.clear_bin, Signal(self.DB), Signal(self.DB)
        scb_lane = [Signal(cb, name=f"scb_lane{d}") for d in range(D)]
        sc2_sum = Signal(cnt)
        cum = Signal(cnt)
        found = Signal()
        m.d.sync += [sc1_v.eq(sc_issue), sc1_bin.eq(sc_bin), scb_v.eq(sc1_v),
                     scb_bin.eq(sc1_bin), sc2_v.eq(scb_v), sc2_bin.eq(scb_bin),
                     sc2_sum.eq(sum(scb_lane))]
        m.d.sync += [scb_lane[d].eq(self.counts[d]) for d in range(D)]
        with m.If(sc_issue):
            with m.If(sc_bin == 0):
                m.d.sync += sc_issue.eq(0)
            with m.Else():
                m.d.sync += sc_bin.eq(sc_bin - 1)
        with m.If(sc2_v & ~found):
            with m.If(cum + sc2_sum >= self.need):
                m.d.sync += [found.eq(1), self.digit.eq(sc2_bin), self.above.eq(cum)]
            with m.Else():
                m.d.sync += cum.eq(cum + sc2_sum)
        m.d.comb += self.done.eq(sc2_v & (sc2_bin == 0))
        with m.If(self.done):
            m.d.sync += self.scanning.eq(0)
        with m.If(self.start):
            m.d.sync += [self.scanning.eq(1), sc_issue.eq(1), sc_bin.eq((1 << self.DB) - 1), cum.eq(0),
                         found.eq(0)]
        return m


class ThresholdCompare(wiring.Component):
    """The winners of each word: keys above the threshold, or equal while the quota lasts.

    Two stages, moving when ``en`` is high: compare each lane's key with
    the threshold (and count the equal ones before each lane), then mark
    the winners and take the equal ones from the quota. Only non-zero
    values can be output winners. ``load`` sets the threshold and quota of
    the next frame.

    With ``channels`` (``G``, the channel-major tie order of a map: lower
    channel first, then position), the equal keys win by a quota per
    channel: a counting pass (``count`` high while a frame's words come in)
    counts each channel's equal keys, ``settle`` then hands the quota out in
    channel order (``G`` cycles, ``busy`` meanwhile), and the emission pass
    takes each channel's equal keys from its own quota. A beat's lanes are
    distinct channels, so no two lanes share a quota.

    Parameters
    ----------
    width : int
        ``D``, lanes.
    key_width, index_bits, total_bits : int
        Widths of a key (``DB * P``), an index within a group, the quota.
    channels : int, optional
        ``G``: a quota per channel (see above).

    Members
    -------
    en : In(1)
    i : In(StructLayout)
        A word read: ``valid``, ``glast``, ``fend``, ``bg``, ``lanes`` (:func:`lane_layout`).
    load : In(1)
    thr : In(key_width)
    quota : In(total_bits)
    count, settle : In(1)
        With ``channels``: the words are counted, not emitted; start handing out
        the quotas.
    o : Out(StructLayout)
        ``valid``, ``glast``, ``fend``, ``win`` (a bit per lane), ``entries``
        (index within the group and value of each lane).
    busy : Out(1)
        A word is in the stages.
    """

    def __init__(self, width: int, key_width: int, index_bits: int, total_bits: int,
                 beats: int, value_bits: int = 8, channels: int | None = None):
        self.D, self.KP, self.ib, self.tb = width, key_width, index_bits, total_bits
        self.beats, self.vb, self.channels = beats, value_bits, channels
        super().__init__({
            "en": In(1),
            "i": In(data.StructLayout({
                "valid": unsigned(1), "glast": unsigned(1), "fend": unsigned(1),
                "bg": range(max(beats, 2)),
                "lanes": data.ArrayLayout(lane_layout(key_width, value_bits), width)})),
            "load": In(1), "thr": In(key_width), "quota": In(total_bits),
            "count": In(1), "settle": In(1),
            "o": Out(data.StructLayout({
                "valid": unsigned(1), "glast": unsigned(1), "fend": unsigned(1),
                "win": unsigned(width),
                "entries": data.ArrayLayout(entry_layout(index_bits, signed(value_bits)),
                                            width)})),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        D, ib = self.D, self.ib
        thr = Signal(self.KP)
        qrem = Signal(self.tb)  # keys equal to the threshold that still win
        with m.If(self.load):
            m.d.sync += [thr.eq(self.thr), qrem.eq(self.quota)]
        i, o = self.i, self.o
        key = [i.lanes[d].key for d in range(D)]
        lv = [i.lanes[d].valid for d in range(D)]
        x = [i.lanes[d].value for d in range(D)]
        # RC: compare with the threshold: above, equal (and the equal ones before each lane)
        rc_v, rc_glast, rc_fend = Signal(), Signal(), Signal()
        rc_gt, rc_eq = Signal(D), Signal(D)
        rc_nz = Signal(D)
        rb_eq = bits(D + 1)
        rc_pre = [Signal(rb_eq, name=f"rc_pre{d}") for d in range(D)]
        rc_neq = Signal(rb_eq)
        rc_ent = [Signal(ib + self.vb, name=f"rc_ent{d}") for d in range(D)]
        rc_bg = Signal.like(i.bg)
        eq = [lv[d] & (key[d] == thr) for d in range(D)]
        with m.If(self.en):
            m.d.sync += rc_v.eq(i.valid)
            with m.If(i.valid):
                m.d.sync += [
                    rc_glast.eq(i.glast), rc_fend.eq(i.fend), rc_eq.eq(Cat(*eq)), rc_bg.eq(i.bg),
                    rc_gt.eq(Cat(*[lv[d] & (key[d] > thr) for d in range(D)])),
                    rc_nz.eq(Cat(*[x[d] != 0 for d in range(D)])),
                    rc_neq.eq(popcount(eq)),
                ]
                m.d.sync += [rc_pre[d].eq(popcount(eq[:d])) for d in range(D)]
                m.d.sync += [rc_ent[d].eq(Cat((i.bg * D + d)[:ib], x[d])) for d in range(D)]
        # R3: the winners: above the threshold, or equal while the quota lasts
        if self.channels is None:
            win = [(rc_gt[d] | (rc_eq[d] & (rc_pre[d] < qrem))) & rc_nz[d] for d in range(D)]
            settling = Const(0)
        else:
            win, settling = self._channel_quotas(m, rc_v, rc_bg, rc_eq, rc_gt, rc_nz, qrem)
        with m.If(self.en):
            m.d.sync += o.valid.eq(rc_v & ~self.count)
            with m.If(rc_v):
                m.d.sync += [o.glast.eq(rc_glast), o.fend.eq(rc_fend), o.win.eq(Cat(*win))]
                with m.If(~self.count):
                    m.d.sync += qrem.eq(Mux(rc_neq >= qrem, 0, qrem - rc_neq))
                m.d.sync += [o.entries[d].as_value().eq(rc_ent[d]) for d in range(D)]
        m.d.comb += self.busy.eq(rc_v | o.valid | settling)
        return m

    def _channel_quotas(self, m: Module, rc_v, bg, rc_eq, rc_gt, rc_nz, qrem):
        """Per channel: equal keys counted, quotas handed out in channel order, and the
        winners of the word in R3 (``bg``: its beat within the group; each channel's
        equal keys from its quota); returns (win, settling)."""
        D, G = self.D, self.channels
        # A channel's equal keys: counted, then its quota, used up by the emission.
        ties = [Signal(self.tb, name=f"ties{c}") for c in range(G)]
        win = []
        for d in range(D):
            mine = [c for c in range(d, G, D)]  # lane d's channels: beat b holds b * D + d
            left = Signal(self.tb, name=f"left{d}")
            with m.Switch(bg):
                for b, c in enumerate(mine):
                    with m.Case(b):
                        m.d.comb += left.eq(ties[c])
                        with m.If(self.en & rc_v & rc_eq[d]):
                            with m.If(self.count):
                                m.d.sync += ties[c].eq(ties[c] + 1)
                            with m.Elif(ties[c] != 0):
                                m.d.sync += ties[c].eq(ties[c] - 1)
            win.append((rc_gt[d] | (rc_eq[d] & (left != 0))) & rc_nz[d])
        # settle: quota[c] = min(ties[c], what is left), in channel order
        settling = Signal()
        sc = Signal(range(max(G, 2)))
        rem = Signal(self.tb)
        with m.If(self.settle):
            m.d.sync += [settling.eq(1), sc.eq(0), rem.eq(qrem)]
        with m.Elif(settling):
            cur = Signal(self.tb)
            m.d.comb += cur.eq(Array(ties)[sc])
            take = Mux(cur < rem, cur, rem)
            with m.Switch(sc):
                for c in range(G):
                    with m.Case(c):
                        m.d.sync += ties[c].eq(take)
            m.d.sync += [rem.eq(rem - take), sc.eq(sc + 1)]
            with m.If(sc == G - 1):
                m.d.sync += settling.eq(0)
        return win, settling


class WinnerPacker(wiring.Component):
    """Words of winner flags packed into sparse beats, ``R`` entries each, one group per
    input group.

    A word is ``D`` entries with a bit per entry that says it wins; ``last``
    ends the group, ``end`` the frame. The winners go in order into a
    staging beat; a full beat goes out when the group shows another winner
    (not last) or ends (last), so every beat of a group but its last holds
    exactly ``R`` entries; a group without winners is one empty beat. Two
    words are held (the one being packed and the next), so ``i.ready`` is a
    register and ``o.ready`` stops here. One word a cycle, plus a cycle
    per beat that fills up before its group ends.

    Parameters
    ----------
    width : int
        ``D``, entries per word.
    entries : int
        ``R``, entries per output beat.
    index_bits : int
        Width of an index within a group.

    Members
    -------
    i : In(stream.Signature(StructLayout))
        ``entries`` (:func:`~cosparse.hw.streams.entry_layout`), ``win``
        (a bit per entry), ``last``, ``end``.
    o : Out(stream.Signature(sparse_layout(R, index_bits, signed(value_bits))))
    """

    def __init__(self, width: int, entries: int, index_bits: int, value_bits: int = 8):
        self.D, self.R, self.ib, self.vb = width, entries, index_bits, value_bits
        self.in_layout = data.StructLayout({
            "entries": data.ArrayLayout(entry_layout(index_bits, signed(value_bits)), width),
            "win": unsigned(width), "last": unsigned(1), "end": unsigned(1)})
        self.out_layout = sparse_layout(entries, index_bits, signed(value_bits))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        D, R, ib = self.D, self.R, self.ib
        rk = bits(D + 1)

        def e_regs(tag):
            return dict(v=Signal(name=f"{tag}_v"), glast=Signal(name=f"{tag}_glast"),
                        fend=Signal(name=f"{tag}_fend"), mask=Signal(D, name=f"{tag}_mask"),
                        n=Signal(rk, name=f"{tag}_n"),
                        rank=[Signal(rk, name=f"{tag}_rank{d}") for d in range(D)],
                        ent=[Signal(ib + self.vb, name=f"{tag}_ent{d}") for d in range(D)])

        def e_load(dst, src):
            return ([dst["v"].eq(1), dst["glast"].eq(src["glast"]), dst["fend"].eq(src["fend"]),
                     dst["mask"].eq(src["mask"]), dst["n"].eq(src["n"])] +
                    [dst["rank"][d].eq(src["rank"][d]) for d in range(D)] +
                    [dst["ent"][d].eq(src["ent"][d]) for d in range(D)])

        # E3 (the word being packed) and E4 (the next word)
        e3, e4 = e_regs("e3"), e_regs("e4")
        ip = self.i.payload
        win = ip.win
        new_e = dict(glast=ip.last, fend=ip.end, mask=win, n=popcount(win),
                     rank=[popcount(win[u] for u in range(d)) for d in range(D)],
                     ent=[ip.entries[d].as_value() for d in range(D)])
        m.d.comb += self.i.ready.eq(~e4["v"])

        # staging beat S and output register O
        s_fill = Signal(range(R + 1))
        s_ent = [Signal(ib + self.vb, name=f"s_ent{j}") for j in range(R)]
        o_v, o_last, o_end = Signal(), Signal(), Signal()
        o_count = Signal(range(R + 1))
        o_ent = [Signal(ib + self.vb, name=f"o_ent{j}") for j in range(R)]
        o_free = Signal()
        m.d.comb += o_free.eq(~o_v | self.o.ready)
        with m.If(self.o.ready & o_v):
            m.d.sync += o_v.eq(0)

        pos = [Signal(range(R + D + 1), name=f"pos{d}") for d in range(D)]
        m.d.comb += [pos[d].eq(s_fill + e3["rank"][d]) for d in range(D)]
        placed = Cat(*[e3["mask"][d] & (pos[d] < R) for d in range(D)])
        s_new = [Mux(j < s_fill, s_ent[j],
                     onehot((e3["mask"][d] & (pos[d] == j), e3["ent"][d]) for d in range(D)))
                 for j in range(R)]
        total = Signal(range(R + D + 1))
        room = Signal(range(R + 1))
        m.d.comb += [total.eq(s_fill + e3["n"]), room.eq(R - s_fill)]
        e3_consume = Signal()
        with m.If(e3["v"]):
            with m.If((s_fill == R) & (e3["n"] != 0)):  # full beat, more to come: flush it
                with m.If(o_free):
                    m.d.sync += [o_v.eq(1), o_last.eq(0), o_end.eq(0), o_count.eq(R),
                                 s_fill.eq(0)] + [o_ent[j].eq(s_ent[j]) for j in range(R)]
            with m.Elif(total > R):  # the beat fills up; the rest of the word stays
                m.d.sync += [s_fill.eq(R), e3["mask"].eq(e3["mask"] & ~placed),
                             e3["n"].eq(e3["n"] - room)]
                m.d.sync += [e3["rank"][d].eq(e3["rank"][d] - room) for d in range(D)]
                m.d.sync += [s_ent[j].eq(s_new[j]) for j in range(R)]
            with m.Elif(e3["glast"]):  # the group ends: out with last
                with m.If(o_free):
                    m.d.comb += e3_consume.eq(1)
                    m.d.sync += [o_v.eq(1), o_last.eq(1), o_end.eq(e3["fend"]),
                                 o_count.eq(total), s_fill.eq(0)]
                    m.d.sync += [o_ent[j].eq(s_new[j]) for j in range(R)]
            with m.Else():
                m.d.comb += e3_consume.eq(1)
                m.d.sync += [s_fill.eq(total)] + [s_ent[j].eq(s_new[j]) for j in range(R)]
        take_new = Signal()
        m.d.comb += take_new.eq(self.i.valid & self.i.ready)
        with m.If(~e3["v"] | e3_consume):
            with m.If(e4["v"]):
                m.d.sync += e_load(e3, e4) + [e4["v"].eq(0)]
            with m.Elif(take_new):
                m.d.sync += e_load(e3, new_e)
            with m.Else():
                m.d.sync += e3["v"].eq(0)
        with m.Elif(take_new):
            m.d.sync += e_load(e4, new_e)

        op = self.o.payload
        m.d.comb += [self.o.valid.eq(o_v), op.count.eq(o_count), op.last.eq(o_last),
                     op.end.eq(o_end)]
        for j in range(R):
            m.d.comb += [op.entries[j].index.eq(o_ent[j][:ib]),
                         op.entries[j].value.eq(o_ent[j][ib:])]
        return m
