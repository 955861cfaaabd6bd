"""Sparse window generator: the receptive fields of a convolution over a sparse map.

:class:`SparseWindow` keeps each input position's beats in a double-buffered
frame store (:class:`PositionWriter` writes frame ``f + 1`` while
:class:`TapWalker` walks the taps of frame ``f``) and :class:`TapReader`
re-emits each tap's stored words with the tap's index offset added, one beat
per cycle; ``docs/hardware.md`` (Windows) describes the unit and its
throughput.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .util import bits, check_int, const_mul
from .streams import sparse_layout

__all__ = ["SparseWindow", "PositionWriter", "TapWalker", "TapReader"]


def _pair(name: str, v, lo: int) -> tuple[int, int]:
    if not (isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) and x >= lo for x in v)):
        raise ValueError(f"{name} must be two integers >= {lo}, got {v!r}")
    return v


def _check_padding(padding, kernel) -> tuple[int, int, int, int]:
    if not (isinstance(padding, tuple) and len(padding) == 4 and
            all(isinstance(p, int) and 0 <= p < k for p, k in zip(padding, (*kernel, *kernel)))):
        raise ValueError(f"padding must be (top, left, bottom, right), each smaller than the "
                         f"kernel {kernel}, got {padding!r}")
    return padding


def _word_bits(entries: int, channels: int, value_bits: int = 8) -> int:
    """Bits of a stored word: ``R`` entries (index, value) and the count."""
    return entries * (bits(channels) + value_bits) + entries.bit_length()


def _tap_layout(positions: int, rows: int, field: int) -> data.StructLayout:
    """One tap as :class:`TapWalker` hands it to :class:`TapReader`."""
    return data.StructLayout({
        "row": range(2 * positions * rows),  # the first store word of its input position
        "inb": 1,  # inside the map (a padding tap emits one empty beat)
        "base": range(field),  # index offset: tap * C
        "last": 1,  # the output position's last tap
        "end": 1,  # the frame's last tap
        "words": bits(rows + 1),  # its input position's word count
    })


class PositionWriter(wiring.Component):
    """Write side of the frame store: each input beat into its position's next word.

    Frame ``f`` goes to buffer ``f mod 2``: word ``(buffer * positions +
    position) * rows + beat`` of ``store``, and the position's beat count to
    ``nwords[buffer * positions + position]`` on its ``last`` beat. Beats
    beyond ``rows`` per position or ``positions`` per frame are dropped. A
    buffer is ``full`` from its frame's ``end`` beat until the read side
    ``clear``\\ s it; the input waits while its buffer is full.

    Parameters
    ----------
    positions : int
        ``H * W``, positions per frame.
    channels : int
        ``C`` (sets the entries' index width).
    entries : int
        ``R``, entries per beat.
    rows : int
        Stored words per position.

    Members
    -------
    i : In(stream.Signature(sparse_layout(R, bits(C))))
    store : In(WritePort.Signature(...))
        The entry store, ``2 * positions * rows`` words.
    nwords : In(WritePort.Signature(...))
        The word counts, ``2 * positions``.
    full : Out(2)
        Buffer written and not yet released (a register).
    clear : In(2)
        The read side releases a buffer.
    """

    def __init__(self, positions: int, channels: int, entries: int, rows: int,
                 value_bits: int = 8):
        for name, v in (("positions", positions), ("channels", channels), ("entries", entries),
                        ("rows", rows)):
            check_int(name, v, 1)
        self.positions, self.channels, self.entries, self.rows = positions, channels, entries, rows
        self.in_layout = sparse_layout(entries, bits(channels), signed(value_bits))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "store": In(WritePort.Signature(addr_width=ceil_log2(2 * positions * rows),
                                            shape=unsigned(_word_bits(entries, channels,
                                                                      value_bits)))),
            "nwords": In(WritePort.Signature(addr_width=ceil_log2(2 * positions),
                                             shape=unsigned(bits(rows + 1)))),
            "full": Out(2),
            "clear": In(2),
        })

    def elaborate(self, platform):
        m = Module()
        hw, rows = self.positions, self.rows
        filled = Signal(2)  # a buffer completes
        in_buf = Signal()
        in_pos = Signal(range(hw + 1))
        in_word = Signal(range(rows + 1))
        m.d.comb += self.i.ready.eq(~self.full.bit_select(in_buf, 1))
        take = Signal()
        m.d.comb += take.eq(self.i.valid & self.i.ready)
        p = self.i.payload
        packed = Cat(*[Cat(e.index, e.value) for e in p.entries], p.count)
        in_range = (in_pos < hw) & (in_word < rows)  # beyond: dropped (compiler guarantees)
        m.d.comb += [
            self.store.addr.eq(const_mul(Mux(in_buf, hw, 0) + in_pos, rows) + in_word),
            self.store.data.eq(packed),
            self.store.en.eq(take & in_range),
            self.nwords.addr.eq(Mux(in_buf, hw, 0) + in_pos),
            self.nwords.data.eq(in_word + 1),
            self.nwords.en.eq(take & p.last & (in_pos < hw)),
        ]
        with m.If(take):
            with m.If(p.end):
                m.d.sync += [in_pos.eq(0), in_word.eq(0), in_buf.eq(~in_buf)]
                m.d.comb += filled.bit_select(in_buf, 1).eq(1)
            with m.Elif(p.last):
                m.d.sync += [in_pos.eq(in_pos + 1), in_word.eq(0)]
            with m.Else():
                m.d.sync += in_word.eq(in_word + 1)
        m.d.sync += self.full.eq((self.full | filled) & ~self.clear)
        return m


class TapWalker(wiring.Component):
    """Read side of the frame store: the taps of every output position, one per step.

    Once buffer ``b`` is ``full`` it walks the output positions (raster
    order) and their taps ``(dy, dx)``, reads each tap's word count from
    ``nwords`` and holds the tap on ``taps`` until it is taken; the frame's
    last tap taken releases the buffer (``clear``) and the walk goes on to
    the other buffer. The tap's map coordinates and word-count address are
    registers stepped by constants, so the ``nwords`` read address is a
    register (no adders before the LUT-RAM read).

    Parameters
    ----------
    height, width, channels : int
        The input map.
    kernel, stride : tuple of int
    padding : tuple of int
        ``(top, left, bottom, right)``.
    rows : int
        Stored words per position.

    Members
    -------
    full : In(2)
        Buffers written (:attr:`PositionWriter.full`).
    clear : Out(2)
        Release a buffer: its frame's last tap is taken.
    nwords : In(ReadPort.Signature(...))
        The word counts, ``2 * height * width``.
    taps : Out(stream.Signature(tap_layout))
        One tap: its first store word, inside the map, index offset, last of
        the position, last of the frame, and its word count.
    """

    def __init__(self, height: int, width: int, channels: int, *, kernel, stride, padding,
                 rows: int):
        for name, v in (("height", height), ("width", width), ("channels", channels),
                        ("rows", rows)):
            check_int(name, v, 1)
        kh, kw = _pair("kernel", kernel, 1)
        sh, sw = _pair("stride", stride, 1)
        _check_padding(padding, kernel)
        self.height, self.width, self.channels, self.rows = height, width, channels, rows
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.out_height = (height + padding[0] + padding[2] - kh) // sh + 1
        self.out_width = (width + padding[1] + padding[3] - kw) // sw + 1
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError(f"kernel {kernel} does not fit the padded {height}x{width} map")
        self.tap_layout = _tap_layout(height * width, rows, kh * kw * channels)
        super().__init__({
            "full": In(2),
            "clear": Out(2),
            "nwords": In(ReadPort.Signature(addr_width=ceil_log2(2 * height * width),
                                            shape=unsigned(bits(rows + 1)))),
            "taps": Out(stream.Signature(self.tap_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        C, H, W = self.channels, self.height, self.width
        kh, kw = self.kernel
        sh, sw = self.stride
        pt, pl, _, _ = self.padding
        Ho, Wo = self.out_height, self.out_width
        rows, hw = self.rows, H * W
        nw_r = self.nwords

        out_buf = Signal()
        oy = Signal(range(Ho))
        ox = Signal(range(Wo))
        dy = Signal(range(kh))
        dx = Signal(range(kw))
        tap_base = Signal(range(kh * kw * C))
        t_valid = Signal()  # a tap is held
        t_advance = Signal()  # the held tap is taken this cycle
        t_start = Signal()
        iy_bits = range(-pt, Ho * sh + kh)
        ix_bits = range(-pl, Wo * sw + kw)
        a_bits = range(-pt * W - pl, 2 * hw + (Ho * sh + kh) * W + Wo * sw + kw)
        iy, ix = Signal(iy_bits, init=-pt), Signal(ix_bits, init=-pl)  # tap (dy, dx)
        oiy, oix = Signal(iy_bits, init=-pt), Signal(ix_bits, init=-pl)  # tap (0, 0)
        addr = Signal(a_bits, init=-pt * W - pl)  # tap (dy, dx)
        row_addr = Signal(a_bits, init=-pt * W - pl)  # tap (dy, 0)
        org_addr = Signal(a_bits, init=-pt * W - pl)  # tap (0, 0)
        line_addr = Signal(a_bits, init=-pt * W - pl)  # tap (0, 0) of output (oy, 0)
        inb = Signal()
        m.d.comb += inb.eq((iy >= 0) & (iy < H) & (ix >= 0) & (ix < W))
        last_tap = Signal()
        last_pos = Signal()
        m.d.comb += [
            last_tap.eq((dy == kh - 1) & (dx == kw - 1)),
            last_pos.eq((oy == Ho - 1) & (ox == Wo - 1)),
        ]
        # The held tap: its (row address, inbounds, base, flags) registered, nwords read
        # in flight.
        t_row = Signal(range(2 * hw * rows))  # its first store word
        t_inb = Signal()
        t_base = Signal(range(kh * kw * C))
        t_last_tap = Signal()
        t_last_pos = Signal()
        t_buf = Signal()
        walking = Signal()  # the tap iterator is inside a frame
        m.d.comb += t_start.eq(walking & (~t_valid | t_advance))
        m.d.comb += [nw_r.addr.eq(addr.as_unsigned()[:len(nw_r.addr)]), nw_r.en.eq(t_start)]
        m.d.comb += [
            self.taps.valid.eq(t_valid),
            self.taps.payload.row.eq(t_row),
            self.taps.payload.inb.eq(t_inb),
            self.taps.payload.base.eq(t_base),
            self.taps.payload.last.eq(t_last_tap),
            self.taps.payload.end.eq(t_last_tap & t_last_pos),
            self.taps.payload.words.eq(nw_r.data),
            t_advance.eq(self.taps.valid & self.taps.ready),
        ]

        def frame_start(buf):  # the coordinates of a frame's first tap, in buffer ``buf``
            first = Mux(buf, hw, 0) - (pt * W + pl)
            return [oy.eq(0), ox.eq(0), dy.eq(0), dx.eq(0), tap_base.eq(0), iy.eq(-pt),
                    ix.eq(-pl), oiy.eq(-pt), oix.eq(-pl), addr.eq(first), row_addr.eq(first),
                    org_addr.eq(first), line_addr.eq(first)]

        with m.If(~walking & self.full.bit_select(out_buf, 1)):
            m.d.sync += [walking.eq(1), *frame_start(out_buf)]
        with m.If(t_start):
            m.d.sync += [t_valid.eq(1), t_row.eq(const_mul(addr.as_unsigned()[:len(nw_r.addr)],
                                                          rows)),
                         t_inb.eq(inb), t_base.eq(tap_base), t_last_tap.eq(last_tap),
                         t_last_pos.eq(last_pos), t_buf.eq(out_buf)]
            with m.If(last_tap):
                m.d.sync += [dy.eq(0), dx.eq(0), tap_base.eq(0)]
                with m.If(last_pos):
                    m.d.sync += [walking.eq(0), out_buf.eq(~out_buf)]
                with m.Elif(ox == Wo - 1):  # the next output row
                    m.d.sync += [ox.eq(0), oy.eq(oy + 1), oiy.eq(oiy + sh), iy.eq(oiy + sh),
                                 oix.eq(-pl), ix.eq(-pl), addr.eq(line_addr + sh * W),
                                 row_addr.eq(line_addr + sh * W),
                                 org_addr.eq(line_addr + sh * W),
                                 line_addr.eq(line_addr + sh * W)]
                with m.Else():  # the next output position
                    m.d.sync += [ox.eq(ox + 1), oix.eq(oix + sw), ix.eq(oix + sw), iy.eq(oiy),
                                 addr.eq(org_addr + sw), row_addr.eq(org_addr + sw),
                                 org_addr.eq(org_addr + sw)]
            with m.Elif(dx == kw - 1):  # the next tap row
                m.d.sync += [dx.eq(0), dy.eq(dy + 1), tap_base.eq(tap_base + C), iy.eq(iy + 1),
                             ix.eq(oix), addr.eq(row_addr + W), row_addr.eq(row_addr + W)]
            with m.Else():
                m.d.sync += [dx.eq(dx + 1), tap_base.eq(tap_base + C), ix.eq(ix + 1),
                             addr.eq(addr + 1)]
        with m.Elif(t_advance):
            m.d.sync += t_valid.eq(0)
        # Release the buffer once its frame's final tap is taken.
        with m.If(t_advance & t_last_tap & t_last_pos):
            m.d.comb += self.clear.bit_select(t_buf, 1).eq(1)
        return m


class TapReader(wiring.Component):
    """The stored words of each tap, re-emitted with the tap's index offset, one per cycle.

    A tap inside the map sends its ``words`` stored words from ``row`` on
    (at least one), a padding tap one empty beat; each entry's index gets
    the tap's ``base`` added. The store's read data is registered before the
    index adders, and a 6-beat FIFO holds the output (room for the two beats
    in flight and a full rate).

    Parameters
    ----------
    positions : int
        ``H * W``, positions per frame.
    channels : int
        ``C``, channels per position.
    field : int
        ``kh * kw * C``: the output indices.
    entries : int
        ``R``, entries per beat.
    rows : int
        Stored words per position.

    Members
    -------
    taps : In(stream.Signature(tap_layout))
        The taps (:attr:`TapWalker.taps`).
    store : In(ReadPort.Signature(...))
        The entry store, ``2 * positions * rows`` words.
    o : Out(stream.Signature(sparse_layout(R, bits(field))))
    """

    def __init__(self, positions: int, channels: int, field: int, entries: int, rows: int,
                 value_bits: int = 8):
        for name, v in (("positions", positions), ("channels", channels), ("field", field),
                        ("entries", entries), ("rows", rows)):
            check_int(name, v, 1)
        self.positions, self.channels, self.field = positions, channels, field
        self.entries, self.rows, self.value_bits = entries, rows, value_bits
        self.tap_layout = _tap_layout(positions, rows, field)
        self.out_layout = sparse_layout(entries, bits(field), signed(value_bits))
        super().__init__({
            "taps": In(stream.Signature(self.tap_layout)),
            "store": In(ReadPort.Signature(addr_width=ceil_log2(2 * positions * rows),
                                           shape=unsigned(_word_bits(entries, channels,
                                                                     value_bits)))),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        R, rows = self.entries, self.rows
        ib_in = bits(self.channels)
        entry_bits = ib_in + self.value_bits
        st_r, tap = self.store, self.taps.payload

        # stage W: the words of the held tap
        fifo = SyncFIFOBuffered(width=self.out_layout.size, depth=6)
        m.submodules.fifo = fifo
        inflight = Signal(2)
        room = Signal()
        m.d.comb += room.eq(fifo.level + inflight < fifo.depth)
        w_idx = Signal(range(rows + 1))
        n_here = Signal(range(rows + 2))
        m.d.comb += n_here.eq(tap.words)
        issue = Signal()
        final_word = Signal()
        m.d.comb += [
            issue.eq(self.taps.valid & room),
            # An out-of-bounds tap emits one empty beat.
            final_word.eq(~tap.inb | (w_idx + 1 >= n_here)),
            self.taps.ready.eq(room & final_word),
            st_r.addr.eq(tap.row + w_idx),
            st_r.en.eq(issue),
        ]
        with m.If(issue):
            m.d.sync += w_idx.eq(Mux(final_word, 0, w_idx + 1))

        # stage E: the read in flight
        e_valid = Signal()
        e_inb = Signal()
        e_base = Signal(range(self.field))
        e_last = Signal()
        e_end = Signal()
        m.d.sync += [e_valid.eq(issue), e_inb.eq(tap.inb), e_base.eq(tap.base),
                     e_last.eq(final_word & tap.last), e_end.eq(final_word & tap.end)]
        # stage E2: the store's read data registered before the index adders (the block
        # RAM's clock-to-out, 5.8 ns on the ECP5, and an adder are too long one path).
        word = Signal.like(st_r.data)
        e2 = [Signal.like(v, name=f"e2_{v.name[2:]}") for v in (e_valid, e_inb, e_base, e_last,
                                                                 e_end)]
        m.d.sync += [word.eq(st_r.data), *(a.eq(b) for a, b in
                                           zip(e2, (e_valid, e_inb, e_base, e_last, e_end)))]
        m.d.comb += inflight.eq(e_valid + e2[0])
        e_valid, e_inb, e_base, e_last, e_end = e2
        out = Signal(self.out_layout)
        for r in range(R):
            ent = word[r * entry_bits:(r + 1) * entry_bits]
            m.d.comb += [out.entries[r].index.eq(e_base + ent[:ib_in]),
                         out.entries[r].value.eq(ent[ib_in:])]
        m.d.comb += [
            out.count.eq(Mux(e_inb, word[R * entry_bits:], 0)),
            out.last.eq(e_last),
            out.end.eq(e_end),
            fifo.w_data.eq(out.as_value()),
            fifo.w_en.eq(e_valid),
            self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
            self.o.payload.as_value().eq(fifo.r_data),
        ]
        return m


class SparseWindow(wiring.Component):
    """Receptive fields of a 2-D convolution over a sparse (H, W, C) map.

    Parameters
    ----------
    height, width : int
        Input map size.
    channels : int
        ``C``, channels per position (indices of the input entries).
    kernel, stride : tuple of int
        ``(kh, kw)`` and ``(sh, sw)``.
    padding : tuple of int
        ``(top, left, bottom, right)`` zero padding, each smaller than the kernel.
    entries : int
        ``R``, entries per beat on both streams.
    max_active : int, optional
        Most active channels one position can carry (``k`` after a local
        k-WTA; default ``C``); sets the frame store size.

    Members
    -------
    i : In(stream.Signature(sparse_layout(R, bits(C))))
    o : Out(stream.Signature(sparse_layout(R, bits(kh * kw * C))))

    Raises
    ------
    ValueError
        A parameter is out of range or the kernel does not fit the padded map.
    """

    def __init__(self, height: int, width: int, channels: int, *, kernel=(3, 3), stride=(1, 1),
                 padding=(0, 0, 0, 0), entries: int = 1, max_active: int | None = None,
                 value_bits: int = 8):
        for name, v in (("height", height), ("width", width), ("channels", channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        kh, kw = _pair("kernel", kernel, 1)
        _pair("stride", stride, 1)
        _check_padding(padding, kernel)
        if not isinstance(entries, int) or not 1 <= entries <= 64:
            raise ValueError(f"entries (R) must be an integer from 1 to 64, got {entries!r}")
        max_active = channels if max_active is None else max_active
        if not isinstance(max_active, int) or not 1 <= max_active <= channels:
            raise ValueError(f"max_active must be an integer from 1 to {channels}, got {max_active!r}")
        self.height, self.width, self.channels = height, width, channels
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.entries, self.max_active = entries, max_active
        self.out_height = (height + padding[0] + padding[2] - kh) // stride[0] + 1
        self.out_width = (width + padding[1] + padding[3] - kw) // stride[1] + 1
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError(f"kernel {kernel} does not fit the padded {height}x{width} map")
        self.rows = -(-max_active // entries)  # stored words per position
        self.value_bits = check_int("value_bits", value_bits, 2, 16)
        self.in_layout = sparse_layout(entries, bits(channels), signed(value_bits))
        self.out_layout = sparse_layout(entries, bits(kh * kw * channels), signed(value_bits))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def store_bits(self) -> int:
        """Bits of the double-buffered frame store (entries + word counts)."""
        word = _word_bits(self.entries, self.channels, self.value_bits)
        positions = self.height * self.width
        return 2 * positions * (self.rows * word + bits(self.rows + 1))

    def elaborate(self, platform):
        m = Module()
        hw, rows = self.height * self.width, self.rows
        store = Memory(shape=unsigned(_word_bits(self.entries, self.channels, self.value_bits)),
                       depth=2 * hw * rows, init=[])
        nwords = Memory(shape=unsigned(bits(rows + 1)), depth=2 * hw, init=[])
        m.submodules.store = store
        m.submodules.nwords = nwords
        st_w, st_r = store.write_port(), store.read_port()
        nw_w, nw_r = nwords.write_port(), nwords.read_port()
        m.submodules.writer = writer = PositionWriter(hw, self.channels, self.entries, rows,
                                                      self.value_bits)
        m.submodules.walker = walker = TapWalker(
            self.height, self.width, self.channels, kernel=self.kernel, stride=self.stride,
            padding=self.padding, rows=rows)
        field = self.kernel[0] * self.kernel[1] * self.channels
        m.submodules.reader = reader = TapReader(hw, self.channels, field, self.entries, rows,
                                                 self.value_bits)
        wiring.connect(m, writer.store, st_w)
        wiring.connect(m, writer.nwords, nw_w)
        wiring.connect(m, walker.nwords, nw_r)
        wiring.connect(m, reader.store, st_r)
        m.d.comb += [walker.full.eq(writer.full), writer.clear.eq(walker.clear)]
        wiring.connect(m, wiring.flipped(self.i), writer.i)
        wiring.connect(m, walker.taps, reader.taps)
        wiring.connect(m, reader.o, wiring.flipped(self.o))
        return m
