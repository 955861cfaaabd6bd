"""Sparse window generator: the receptive fields of a convolution over a sparse map.

The input is a sparse feature map: one group per position (raster order),
holding that position's active channels as ``(channel, value)``. For every
output position ``(oy, ox)`` (raster order) the generator emits one group
holding the active inputs of its receptive field, as the overlay engine
wants them: ``index = (dy * kw + dx) * C + c`` (the ``(ky, kx, c)`` flattening
of the kernels), in increasing index order.

Structure
---------
A double-buffered frame store: frame ``f + 1`` is written while frame ``f``
is read. Each position keeps up to ``ceil(max_active / R)`` words of ``R``
entries, exactly the input beats it arrived in, plus its word count; the
read side walks the taps of each output position and re-emits the stored
words with the tap's index offset added. Taps outside the map (zero
padding) emit one empty beat.

Why a frame store and not line buffers: the maps of the target networks are
small (gsc-cs: 32x32x1 and 14x14 with 8 active channels, 8 kbit and 22 kbit
per buffer), a frame store never stalls the writer on the reader's row
order, and it keeps the generator simple; line buffers cut memory for large
maps at the cost of latency bookkeeping.

Throughput
----------
One input beat per cycle. Output: one beat per cycle, ``sum over taps of
max(1, words(tap))`` beats per output position, where ``words(tap)`` is the
number of beats the tap's input position arrived in (``ceil(active / R)``,
at least 1 even for an empty position): with ``max_active <= R`` that is
exactly ``kh * kw`` cycles per output position. Reading frame ``f`` overlaps
writing frame ``f + 1``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .util import bits, const_mul
from .streams import sparse_layout

__all__ = ["SparseWindow"]




def _pair(name: str, v, lo: int) -> tuple[int, int]:
    if not (isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) and x >= lo for x in v)):
        raise ValueError(f"{name} must be two integers >= {lo}, got {v!r}")
    return v


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
                 padding=(0, 0, 0, 0), entries: int = 1, max_active: int | None = None):
        for name, v in (("height", height), ("width", width), ("channels", channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        kh, kw = _pair("kernel", kernel, 1)
        _pair("stride", stride, 1)
        if not (isinstance(padding, tuple) and len(padding) == 4 and
                all(isinstance(p, int) and 0 <= p < k for p, k in zip(padding, (kh, kw, kh, kw)))):
            raise ValueError(f"padding must be (top, left, bottom, right), each smaller than the "
                             f"kernel {kernel}, got {padding!r}")
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
        self.in_layout = sparse_layout(entries, bits(channels))
        self.out_layout = sparse_layout(entries, bits(kh * kw * channels))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def store_bits(self) -> int:
        """Bits of the double-buffered frame store (entries + word counts)."""
        word = self.entries * (bits(self.channels) + 8) + self.entries.bit_length()
        positions = self.height * self.width
        return 2 * positions * (self.rows * word + bits(self.rows + 1))

    def elaborate(self, platform):
        m = Module()
        R, C = self.entries, self.channels
        H, W = self.height, self.width
        kh, kw = self.kernel
        sh, sw = self.stride
        pt, pl, _, _ = self.padding
        Ho, Wo = self.out_height, self.out_width
        rows, hw = self.rows, H * W
        ib_in = bits(C)
        cnt_bits = R.bit_length()
        entry_bits = ib_in + 8
        word_bits = R * entry_bits + cnt_bits

        store = Memory(shape=unsigned(word_bits), depth=2 * hw * rows, init=[])
        nwords = Memory(shape=unsigned(bits(rows + 1)), depth=2 * hw, init=[])
        m.submodules.store = store
        m.submodules.nwords = nwords
        st_w, st_r = store.write_port(), store.read_port()
        nw_w, nw_r = nwords.write_port(), nwords.read_port()

        full = Signal(2)
        clear = Signal(2)  # read side releases a buffer
        filled = Signal(2)  # write side completes a buffer

        # ---------------- write side
        in_buf = Signal()
        in_pos = Signal(range(hw + 1))
        in_word = Signal(range(rows + 1))
        m.d.comb += self.i.ready.eq(~full.bit_select(in_buf, 1))
        take = Signal()
        m.d.comb += take.eq(self.i.valid & self.i.ready)
        p = self.i.payload
        packed = Cat(*[Cat(p.entries[r].index, p.entries[r].value) for r in range(R)], p.count)
        in_range = (in_pos < hw) & (in_word < rows)  # beyond: dropped (compiler guarantees)
        m.d.comb += [
            st_w.addr.eq(const_mul(Mux(in_buf, hw, 0) + in_pos, rows) + in_word),
            st_w.data.eq(packed),
            st_w.en.eq(take & in_range),
            nw_w.addr.eq(Mux(in_buf, hw, 0) + in_pos),
            nw_w.data.eq(in_word + 1),
            nw_w.en.eq(take & p.last & (in_pos < hw)),
        ]
        with m.If(take):
            with m.If(p.end):
                m.d.sync += [in_pos.eq(0), in_word.eq(0), in_buf.eq(~in_buf)]
                m.d.comb += filled.bit_select(in_buf, 1).eq(1)
            with m.Elif(p.last):
                m.d.sync += [in_pos.eq(in_pos + 1), in_word.eq(0)]
            with m.Else():
                m.d.sync += in_word.eq(in_word + 1)
        m.d.sync += full.eq((full | filled) & ~clear)

        # ---------------- read side, stage T: one tap per step
        # The tap's map coordinates (iy, ix) and its word-count address (buffer * H * W +
        # iy * W + ix) are registers stepped by constants as the taps are walked, so the
        # nwords read address is a register (computing it from (oy, dy, ox, dx) took four
        # adders before a LUT-RAM read: 74 MHz on the ECP5).
        out_buf = Signal()
        oy = Signal(range(Ho))
        ox = Signal(range(Wo))
        dy = Signal(range(kh))
        dx = Signal(range(kw))
        tap_base = Signal(range(kh * kw * C))
        t_valid = Signal()  # a tap is held in T for W
        t_advance = Signal()  # W takes the held tap this cycle
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
        # T holds one tap: its (row address, inbounds, base, flags) registered, nwords read
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

        def frame_start(buf):  # the coordinates of a frame's first tap, in buffer ``buf``
            first = Mux(buf, hw, 0) - (pt * W + pl)
            return [oy.eq(0), ox.eq(0), dy.eq(0), dx.eq(0), tap_base.eq(0), iy.eq(-pt),
                    ix.eq(-pl), oiy.eq(-pt), oix.eq(-pl), addr.eq(first), row_addr.eq(first),
                    org_addr.eq(first), line_addr.eq(first)]

        with m.If(~walking & full.bit_select(out_buf, 1)):
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

        # ---------------- stage W: the words of the held tap
        # Room for the two beats in flight (E, E2) and a full rate.
        fifo = SyncFIFOBuffered(width=self.out_layout.size, depth=6)
        m.submodules.fifo = fifo
        inflight = Signal(2)
        room = Signal()
        m.d.comb += room.eq(fifo.level + inflight < fifo.depth)
        w_idx = Signal(range(rows + 1))
        n_here = Signal(range(rows + 2))
        m.d.comb += n_here.eq(nw_r.data)
        issue = Signal()
        final_word = Signal()
        m.d.comb += [
            issue.eq(t_valid & room),
            # An out-of-bounds tap emits one empty beat.
            final_word.eq(~t_inb | (w_idx + 1 >= n_here)),
            t_advance.eq(issue & final_word),
            st_r.addr.eq(t_row + w_idx),
            st_r.en.eq(issue),
        ]
        with m.If(issue):
            m.d.sync += w_idx.eq(Mux(final_word, 0, w_idx + 1))
        # Release the buffer once the frame's final read is issued.
        with m.If(t_advance & t_last_tap & t_last_pos):
            m.d.comb += clear.bit_select(t_buf, 1).eq(1)

        e_valid = Signal()
        e_inb = Signal()
        e_base = Signal(range(kh * kw * C))
        e_last = Signal()
        e_end = Signal()
        m.d.sync += [e_valid.eq(issue), e_inb.eq(t_inb), e_base.eq(t_base),
                     e_last.eq(final_word & t_last_tap), e_end.eq(final_word & t_last_tap & t_last_pos)]
        # E2: the store's read data registered before the index adders (the block RAM's
        # clock-to-out, 5.8 ns on the ECP5, and an adder were one path into the FIFO).
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

