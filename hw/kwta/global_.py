"""Global k-WTA: exactly ``k`` winners over a whole frame, by a threshold search.

:class:`GlobalKWTA` builds :class:`HistogramGlobalKWTA` (radix histograms,
one word of ``D`` elements per cycle) or, with ``serial=True``,
:class:`SerialGlobalKWTA` (a bit-serial search over the stored frame, the
smallest build); both have the same interface. See ``docs/kwta.md`` for the
algorithm, throughput and measured timing.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..streams import dense_layout, sparse_layout
from ..util import bits, check_int
from ..util import value_bits as range_bits
from .common import (MAX_BOOST, MAX_KEY_BOOST, Keys, SerialOutput, boost_dsps, check_boost,
                     check_key_shift, check_range, check_rescale, key_bits, rescaled)
from .threshold import (
    FrameReader,
    FrameWriter,
    LaneHistograms,
    ThresholdCompare,
    ThresholdScan,
    WinnerPacker,
)

__all__ = ["GlobalKWTA", "HistogramGlobalKWTA", "SerialGlobalKWTA"]


class GlobalKWTA(wiring.Component):
    """k-winners-take-all over a whole frame: a vector or a whole (H, W, C) map.

    A frame is ``size`` (``N``) elements in ``N / G`` groups of ``group``
    (``G``) elements: a vector is one group (``G = N``), a map one group of
    ``C`` channels per position (``N = H * W * C``). Exactly ``k`` winners
    per frame, ties to the lower flat index (position * G + channel; or, with
    ``tie_order="channel-major"``, channel * positions + position: an NCHW map's
    order). The output has one sparse group per input group (empty ones
    included), index = element within the group.

    ``GlobalKWTA(...)`` builds :class:`HistogramGlobalKWTA`, or
    :class:`SerialGlobalKWTA` with ``serial=True``.

    Parameters
    ----------
    size : int
        ``N``, elements per frame.
    k : int
        Winners per frame, 1 to ``N``.
    group : int, optional
        ``G``, elements per group; must divide ``N`` (default ``N``: a vector).
    width : int
        ``D``, elements per input beat.
    entries : int
        ``R``, entries per output beat (1 to 64).
    boost : sequence of int, optional
        ``G`` integers from 1 to 65535 (``2**17 - 1`` with ``key_shift``): one per
        unit of a vector, one per channel of a map.
    serial : bool
        The small, slow build (:class:`SerialGlobalKWTA`); needs ``width`` 1.
    max_winners : int, optional
        ``B``: the threshold tie rule, every key equal to the ``k``-th best
        also wins, up to ``B`` winners per frame (``k`` to ``N``; the first
        ones in flat order among the ties). None: exactly ``k`` winners.
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
    tie_order : {"stream", "channel-major"}
        The flat order ties follow (see above). Channel-major needs the
        histogram build; it adds a pass counting each channel's keys equal to
        the threshold, and ``G`` cycles handing out their quotas.
    dsp_width : int
        Signed input width of the part's multipliers (16 iCE40, 18 ECP5): a
        boost wider than one unsigned input takes two per key.
    digit_bits : int
        Bits of a radix digit of the histogram build (1 to 8): ``2**digit_bits``
        bins a histogram. 8 in hardware; fewer make the unit small enough
        for a formal proof. The serial build takes only 8.

    Members
    -------
    i : In(stream.Signature(dense_layout(D, signed(value_bits))))
    o : Out(stream.Signature(sparse_layout(R, bits(G), signed(out_bits))))

    Raises
    ------
    ValueError
        A parameter is not an integer in its range, ``group`` does not
        divide ``size``, or ``boost`` has the wrong length or a bad value.
    """

    SCAN_OVERHEAD = 11  # cycles of pipeline and hand-off around each scan
    COUNT_OVERHEAD = 6  # ... around the channel-major counting pass and quotas

    def __new__(cls, size=None, k=None, *, group=None, width: int = 8, entries: int = 8,
                boost=None, serial: bool = False, max_winners=None, key_shift=None, rescale=None,
                value_bits=8, key_range=(-128, 127), out_range=(-128, 127), tie_order="stream",
                dsp_width=18, digit_bits=8):
        design = cls
        if cls is GlobalKWTA:
            design = SerialGlobalKWTA if serial else HistogramGlobalKWTA
        return super().__new__(design, src_loc_at=1)

    def __init__(self, size: int, k: int, *, group: int | None = None, width: int = 8,
                 entries: int = 8, boost=None, serial: bool = False,
                 max_winners: int | None = None, key_shift: int | None = None,
                 rescale: tuple[int, int] | None = None, value_bits: int = 8,
                 key_range: tuple[int, int] = (-128, 127),
                 out_range: tuple[int, int] = (-128, 127), tie_order: str = "stream",
                 dsp_width: int = 18, digit_bits: int = 8):
        check_int("size", size, 1)
        #: Signed input width of the part's multipliers (16 iCE40, 18 ECP5): DSPs per key.
        self.dsp_width = check_int("dsp_width", dsp_width, 16, 18)
        check_int("k", k, 1, size)
        if max_winners is not None:
            check_int("max_winners", max_winners, k, size)
        self.max_winners = max_winners
        #: The most winners a frame can have.
        self.winners = k if max_winners is None else max_winners
        group = size if group is None else group
        check_int("group", group, 1, size)
        if size % group:
            raise ValueError(f"group must divide size {size}, got {group!r}")
        check_int("width (D)", width, 1)
        check_int("entries (R)", entries, 1, 64)
        self.size, self.k, self.group, self.width, self.entries = size, k, group, width, entries
        if tie_order not in ("stream", "channel-major"):
            raise ValueError(f"tie_order must be 'stream' or 'channel-major', got {tie_order!r}")
        if tie_order != "stream" and serial:
            raise ValueError("the channel-major tie order needs the histogram build "
                             "(serial=False)")
        self.tie_order = tie_order
        if serial and width != 1:
            raise ValueError(f"serial needs width (D) 1, got {width!r}")
        #: Bits of a radix digit (histogram build): ``2**digit_bits`` bins.
        self.digit_bits = check_int("digit_bits", digit_bits, 1, 8)
        if serial and digit_bits != 8:
            raise ValueError(f"digit_bits is the histogram build's (serial=False), got "
                             f"{digit_bits!r} with serial=True")
        if bool(serial) != self.serial:
            raise ValueError(f"{type(self).__name__} is built with serial={self.serial}, "
                             f"got serial={serial!r}")
        self.key_shift = check_key_shift(key_shift)
        self.boost = check_boost(boost, group, "unit or channel",
                                 MAX_BOOST if self.key_shift is None else MAX_KEY_BOOST)
        self.rescale = check_rescale(rescale)
        self.value_bits = check_int("value_bits", value_bits, 2, 16)
        self.key_range = check_range("key_range", key_range)
        self.out_range = check_range("out_range", out_range)
        #: Signed bits of an output value (the rescaled range's with ``rescale``).
        self.out_bits = max(8, range_bits(*self.out_range)) if rescale is not None \
            else value_bits
        self.positions = size // group
        self.beats = -(-group // width)  # beats per group
        self.words = self.positions * self.beats  # beats per frame
        self.index_bits = bits(group)
        self.key_bits = key_bits(self.boost, self.key_shift, value_bits, self.key_range)
        self.digits = -(-self.key_bits // self.digit_bits)
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
    def serial(self) -> bool:
        """Built as the serial threshold search (:class:`SerialGlobalKWTA`)."""
        return isinstance(self, SerialGlobalKWTA)

    @property
    def cycles_per_frame(self) -> int:
        """Steady-state cycles per frame when emission is hidden."""
        raise NotImplementedError


class HistogramGlobalKWTA(GlobalKWTA):
    """Global k-WTA by radix histograms of the keys' digits (8 bits: 256 bins).

    ::

        i -> FrameWriter -> frame buffer (two halves)
               |  top digit of each key
               v
             LaneHistograms <- FrameReader (refine: next digit) <- frame buffer
               |  ThresholdScan per digit (``2**digit_bits`` bins, top down)
               v
             threshold key T, quota q
               -> FrameReader (emit) -> ThresholdCompare -> WinnerPacker -> o

    A frame takes ``P * (W + 2**digit_bits + SCAN_OVERHEAD)`` cycles in steady state
    (``P`` digits, ``W`` words); emission overlaps the next frame's write.
    Parameters and members as :class:`GlobalKWTA` (``serial`` False).
    """

    @property
    def cycles_per_frame(self) -> int:
        """Steady-state cycles per frame: ``P`` scans of all bins and ``P - 1`` refine reads
        around the write of ``W`` words (channel-major ties: a counting pass of ``W`` and
        ``G`` cycles of quotas more)."""
        extra = self.words + self.group + self.COUNT_OVERHEAD \
            if self.tie_order == "channel-major" else 0
        return self.digits * (self.words + (1 << self.digit_bits) + self.SCAN_OVERHEAD) + extra

    def elaborate(self, platform):
        m = Module()
        N, k, G, D, R = self.size, self.k, self.group, self.width, self.entries
        BG, W, P = self.beats, self.words, self.digits
        ib, kb, DB = self.index_bits, self.key_bits, self.digit_bits
        KP = DB * P
        cnt = bits(N + 1)
        lane_cnt = bits(W + 1)
        keys = Keys(self.boost, D, BG, self.key_shift, self.value_bits, self.key_range)
        vb, ob = self.value_bits, self.out_bits
        if keys.rom is not None:
            m.submodules.boost_rom = keys.rom
        bb = keys.bb if self.boost is not None else 0
        m.submodules.buf = buf = Memory(shape=unsigned(D * vb), depth=2 * W, init=[])
        buf_w, buf_r = buf.write_port(), buf.read_port()
        m.submodules.writer = writer = FrameWriter(W, BG, D, G, kb, bb, self.key_shift, vb,
                                                   self.key_range, digit_bits=DB)
        m.submodules.reader = reader = FrameReader(W, BG, D, G, kb, bb, self.key_shift,
                                                   self.rescale, vb, self.key_range,
                                                   self.out_range, ob, digit_bits=DB)
        m.submodules.hist = hist = LaneHistograms(D, lane_cnt, DB)
        m.submodules.scan = scan = ThresholdScan(D, lane_cnt, cnt, DB)
        chw = self.tie_order == "channel-major"
        m.submodules.compare = compare = ThresholdCompare(D, KP, ib, cnt, BG, ob,
                                                          channels=G if chw else None)
        m.submodules.packer = packer = WinnerPacker(D, R, ib, ob)

        # writer: frame -> buffer, top digit -> histograms. The input beat is registered
        # first, so the writer's enables start from registers beside it rather than at the
        # upstream FIFO's output (on the routed gsc-cs build: 10.2 ns into its counters).
        # (The next frame's first beat waits here while the writer is filled.)
        i_valid = Signal()
        i_beat = Signal.like(self.i.payload)
        m.d.comb += [self.i.ready.eq(~i_valid | writer.i.ready),
                     writer.i.valid.eq(i_valid), writer.i.payload.eq(i_beat)]
        with m.If(self.i.ready):
            m.d.sync += [i_valid.eq(self.i.valid), i_beat.eq(self.i.payload)]
        m.d.comb += [buf_w.addr.eq(writer.buf_addr), buf_w.data.eq(writer.buf_data),
                     buf_w.en.eq(writer.buf_en)]
        wboost = keys.lanes(m, writer.boost_addr, 1)
        if wboost is not None:
            m.d.comb += writer.boost.eq(Cat(*wboost))

        # reader: refine passes, the channel-major counting pass and emission
        REFINE, EMIT, COUNT = 0, 1, 2
        rd_mode = Signal(2)
        adv_r = Signal()
        m.d.comb += [buf_r.addr.eq(reader.buf_addr), buf_r.en.eq(adv_r),
                     reader.buf_data.eq(buf_r.data), reader.en.eq(adv_r),
                     reader.slot.eq(writer.slot)]
        rboost = keys.lanes(m, reader.boost_addr, adv_r)
        if rboost is not None:
            m.d.comb += reader.boost.eq(Cat(*rboost))
        r2 = reader.o
        rd_idle = Signal()
        m.d.comb += rd_idle.eq(~reader.busy & ~compare.busy)

        # histogram update: the writer's top digit or a refine pass's next digit
        sel_pass = Signal(range(max(P, 2)))
        prefix = Signal(KP)  # threshold digits found so far (right-aligned)
        with m.If((rd_mode == REFINE) & r2.valid):
            m.d.comb += hist.valid.eq(1)
            with m.Switch(sel_pass):
                for q in range(1, P):
                    with m.Case(q):
                        hi = DB * (P - q)
                        for d in range(D):
                            key = r2.lanes[d].key
                            m.d.comb += [
                                hist.digits[d].eq(key[hi - DB:hi]),
                                hist.incs[d].eq(r2.lanes[d].valid
                                                & (key[hi:] == prefix[:DB * q])),
                            ]
        with m.Else():
            m.d.comb += hist.valid.eq(writer.keys_valid)
            for d in range(D):
                m.d.comb += [hist.digits[d].eq(writer.keys[d].key[KP - DB:]),
                             hist.incs[d].eq(writer.keys_valid & writer.keys[d].valid)]
        m.d.comb += [hist.scanning.eq(scan.scanning), hist.scan_bin.eq(scan.bin),
                     hist.clear_bin.eq(scan.clear_bin), hist.clear.eq(scan.clear),
                     scan.counts.eq(hist.counts)]

        # selector: scans, refine passes, hand-off to emission
        need = Signal(cnt)
        m.d.comb += scan.need.eq(need)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(writer.filled & ~writer.busy & ~hist.busy):
                    m.d.sync += [sel_pass.eq(0), prefix.eq(0), need.eq(k)]
                    m.d.comb += scan.start.eq(1)
                    m.next = "SCAN"
            with m.State("SCAN"):
                with m.If(scan.done):
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.sync += [prefix.eq(Cat(scan.digit, prefix[:KP - DB])),
                             need.eq(need - scan.above)]
                with m.If(sel_pass == P - 1):
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += sel_pass.eq(sel_pass + 1)
                    m.next = "WAIT_READER"
            with m.State("WAIT_READER"):
                with m.If(rd_idle):
                    m.d.sync += rd_mode.eq(REFINE)
                    m.d.comb += reader.start.eq(1)
                    m.next = "REFINE"
            with m.State("REFINE"):
                with m.If(rd_idle & ~hist.busy):
                    m.d.comb += scan.start.eq(1)
                    m.next = "SCAN"
            with m.State("DONE"):
                with m.If(rd_idle):
                    m.d.comb += [reader.start.eq(1), compare.load.eq(1)]
                    if chw:  # count each channel's keys equal to the threshold first
                        m.d.sync += rd_mode.eq(COUNT)
                        m.next = "COUNT"
                    else:
                        m.d.sync += rd_mode.eq(EMIT)
                        m.d.comb += writer.release.eq(1)
                        m.next = "IDLE"
            with m.State("COUNT"):
                with m.If(rd_idle):
                    m.d.comb += compare.settle.eq(1)
                    m.next = "SETTLE"
            with m.State("SETTLE"):
                with m.If(rd_idle):
                    m.d.sync += rd_mode.eq(EMIT)
                    m.d.comb += [reader.start.eq(1), writer.release.eq(1)]
                    m.next = "IDLE"

        # emission: the winners of each word, packed R per beat
        m.d.comb += [compare.en.eq(adv_r), compare.i.eq(r2), compare.count.eq(rd_mode == COUNT),
                     compare.i.valid.eq(r2.valid & ((rd_mode == EMIT) | (rd_mode == COUNT))),
                     compare.thr.eq(prefix), compare.quota.eq(need + (self.winners - k))]
        m.d.comb += [packer.i.valid.eq(compare.o.valid), packer.i.payload.win.eq(compare.o.win),
                     packer.i.payload.last.eq(compare.o.glast),
                     packer.i.payload.end.eq(compare.o.fend),
                     packer.i.payload.entries.eq(compare.o.entries)]
        m.d.comb += adv_r.eq((rd_mode != EMIT) | packer.i.ready)
        wiring.connect(m, packer.o, wiring.flipped(self.o))
        return m


class SerialGlobalKWTA(GlobalKWTA):
    """Global k-WTA for the smallest parts: a bit-serial threshold search, no histograms.

    The frame (one element per beat) is written into one half of a
    double-buffered memory, then read ``kb`` times (the keys computed as it
    is read) to find the threshold key bit by bit from the top (keep bit
    ``b`` when at least ``k`` keys are ``>=`` the threshold with it set),
    once more to count the keys above it (the quota of equal keys), and
    once to emit. ``(kb + 2) * (N + 1) + 1`` cycles per frame; the next
    frame is written meanwhile. Parameters and members as
    :class:`GlobalKWTA` (``serial`` True, ``width`` 1).
    """

    def __init__(self, size: int, k: int, *, width: int = 1, serial: bool = True, **params):
        super().__init__(size, k, width=width, serial=serial, **params)

    @property
    def cycles_per_frame(self) -> int:
        """Steady-state cycles per frame: ``kb`` search passes, the quota pass and the
        emission, ``N + 1`` each."""
        return (self.key_bits + 2) * (self.size + 1) + 1

    def elaborate(self, platform):
        m = Module()
        N, k, G, R = self.size, self.k, self.group, self.entries
        ib, kb = self.index_bits, self.key_bits
        nb = bits(N)
        cnt_bits = bits(N + 1)
        keys = Keys(self.boost, 1, G, self.key_shift, self.value_bits, self.key_range)
        vb, ob = self.value_bits, self.out_bits
        if keys.rom is not None:
            m.submodules.boost_rom = keys.rom
        m.submodules.frames = mem = Memory(shape=unsigned(vb), depth=2 << nb, init=[])
        wp = mem.write_port()
        rp = mem.read_port()
        full = Signal(2)  # a complete frame waits in that half
        full_set = Signal(2)
        full_clr = Signal(2)
        m.d.sync += full.eq((full | full_set) & ~full_clr)

        # write: the values (keys are computed as the passes read them)
        p = self.i.payload
        wsel = Signal()  # the half being written
        wa = Signal(range(max(N, 2)))
        take = Signal()
        m.d.comb += [self.i.ready.eq(~full.bit_select(wsel, 1)),
                     take.eq(self.i.valid & self.i.ready),
                     wp.addr.eq(Cat(wa, wsel)), wp.data.eq(p.data[0]), wp.en.eq(take)]
        with m.If(take):
            with m.If(wa == N - 1):
                m.d.sync += [wa.eq(0), wsel.eq(~wsel)]
                m.d.comb += full_set.bit_select(wsel, 1).eq(1)
            with m.Else():
                m.d.sync += wa.eq(wa + 1)

        # read passes over the half rsel
        rsel = Signal()
        busy = Signal()  # passes running on rsel
        bi = Signal(range(max(kb, 2)))  # threshold bit of a search pass
        kind = Signal(2)  # 0 search, 1 count above, 2 emit
        thr = Signal(kb)
        cand = Signal(kb)
        m.d.comb += cand.eq(thr | (Const(1, kb) << bi))
        count = Signal(cnt_bits)
        quota = Signal(cnt_bits)
        ra = Signal(range(max(N, 2)))
        issued = Signal()  # every address of this pass has been read
        d_v, d_last = Signal(), Signal()
        go = Signal()  # the element in d is processed this cycle
        advance = Signal()
        m.d.comb += [advance.eq(~d_v | go), rp.addr.eq(Cat(ra, rsel)), rp.en.eq(advance)]
        rg = Signal(range(max(G, 2)))  # element within its group of the address read
        with m.If(~busy & full.bit_select(rsel, 1)):
            m.d.sync += [busy.eq(1), kind.eq(0), bi.eq(kb - 1), thr.eq(0), count.eq(0),
                         ra.eq(0), rg.eq(0), issued.eq(0)]
        with m.If(advance):
            m.d.sync += [d_v.eq(busy & ~issued), d_last.eq(ra == N - 1)]
            with m.If(busy & ~issued):
                m.d.sync += rg.eq(Mux(rg == G - 1, 0, rg + 1))
                with m.If(ra == N - 1):
                    m.d.sync += [ra.eq(0), issued.eq(1)]
                with m.Else():
                    m.d.sync += ra.eq(ra + 1)
        # The boost is read with the value: the key is x * boost on every pass.
        blane = keys.lanes(m, rg, advance)
        x_in = rp.data.as_signed()
        x = Signal(signed(ob))  # the value a winner keeps
        m.d.comb += x.eq(rescaled(x_in, self.rescale, self.out_range))
        key = Signal(kb)
        m.d.comb += key.eq(keys.ukey(x_in, None if blane is None else blane[0]))

        # search and quota passes
        hit = Signal()
        m.d.comb += hit.eq(Mux(kind == 0, key >= cand, key > thr))
        total = Signal(cnt_bits)
        m.d.comb += total.eq(count + hit)
        eq_seen = Signal(cnt_bits)
        gi = Signal(range(max(G, 2)))
        with m.If(go & (kind != 2)):
            m.d.sync += count.eq(total)
            with m.If(d_last):  # the pass is over: decide, start the next one
                m.d.sync += [count.eq(0), issued.eq(0)]
                with m.If(kind == 0):
                    with m.If(total >= k):
                        m.d.sync += thr.eq(cand)
                    with m.If(bi == 0):
                        m.d.sync += kind.eq(1)
                    with m.Else():
                        m.d.sync += bi.eq(bi - 1)
                with m.Else():
                    m.d.sync += [quota.eq(self.winners - total), kind.eq(2), eq_seen.eq(0),
                                 gi.eq(0)]

        # emission: winners in flat order, one group per input group
        win = Signal()
        m.d.comb += win.eq((key > thr) | ((key == thr) & (eq_seen < quota)))
        has = Signal()
        m.d.comb += has.eq(win & (x != 0))
        gend = Signal()
        m.d.comb += gend.eq(gi == G - 1)
        # A full beat waits in b until the group shows another winner (then it goes
        # out, not last) or ends (then it is the group's last beat): canonical packing.
        out = SerialOutput(m, self.o, R, self.winners, ib, ob)
        flush, flush_end = Signal(), Signal()  # b holds a group's last beat, to send
        spill = Signal()  # a winner arrives while b is full
        m.d.comb += spill.eq(has & (out.b_cnt == R))
        complete = Signal()  # this element sends a beat
        m.d.comb += complete.eq(gend | spill)
        m.d.comb += go.eq(d_v & ((kind != 2) | (~flush & (~complete | out.free))))
        entry = Cat(gi, x)
        with m.If(flush & out.free):
            out.send(out.b_cnt, out.with_entry(entry, 0), 1, flush_end)
            m.d.sync += [out.b_cnt.eq(0), flush.eq(0)]
        with m.If(go & (kind == 2)):
            m.d.sync += [eq_seen.eq(eq_seen + (key == thr)),
                         gi.eq(Mux(gend, 0, gi + 1))]
            with m.If(spill):  # the full beat goes; the winner starts the next one
                out.send(R, out.b_ent, 0, 0)
                m.d.sync += [out.b_ent[0].eq(entry), out.b_cnt.eq(1)]
                with m.If(gend):
                    m.d.sync += [flush.eq(1), flush_end.eq(d_last)]
            with m.Elif(gend):
                out.send(out.b_cnt + has, out.with_entry(entry, has), 1, d_last)
                m.d.sync += out.b_cnt.eq(0)
            with m.Elif(has):
                out.append(entry)
            with m.If(d_last):  # the frame is out: free its half
                m.d.sync += [busy.eq(0), rsel.eq(~rsel)]
                m.d.comb += full_clr.bit_select(rsel, 1).eq(1)
        return m
