"""Dense window generator: every receptive field of a conv over a dense map, one per cycle.

:class:`DenseWindow` writes each frame into a double-buffered store split into
``kh x kw`` banks (:class:`BankWriter`), so that the pixels of any window lie
in distinct banks; :class:`BankWalker` reads every bank once per output
position and :class:`FieldPacker` rotates the banks' pixels to their taps and
zeros the padding, one dense beat of ``kh * kw * C`` elements per cycle.
``docs/hardware.md`` (Windows) describes the unit and its throughput.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .util import check_int, const_mul, mux_tree, skid_output, typed_payload
from .streams import dense_layout

__all__ = ["DenseWindow", "BankWriter", "BankWalker", "FieldPacker"]


def _check_pair(name: str, v) -> tuple[int, int]:
    if not (isinstance(v, tuple) and len(v) == 2 and all(isinstance(k, int) and k >= 1 for k in v)):
        raise ValueError(f"{name} must be two positive integers, got {v!r}")
    return v


def _check_geometry(height, width, channels, kernel, stride, padding) -> tuple[int, int]:
    """Validate a window's geometry; its output size ``(Ho, Wo)``."""
    for name, v in (("height", height), ("width", width), ("channels", channels)):
        check_int(name, v, 1)
    kh, kw = _check_pair("kernel", kernel)
    _check_pair("stride", stride)
    if not (isinstance(padding, tuple) and len(padding) == 4 and
            all(isinstance(p, int) and 0 <= p < k for p, k in zip(padding, (kh, kw, kh, kw)))):
        raise ValueError(f"padding must be (top, left, bottom, right), each smaller than the "
                         f"kernel {kernel}, got {padding!r}")
    out_height = (height + padding[0] + padding[2] - kh) // stride[0] + 1
    out_width = (width + padding[1] + padding[3] - kw) // stride[1] + 1
    if out_height < 1 or out_width < 1:
        raise ValueError(f"kernel {kernel} does not fit the padded {height}x{width} map")
    return out_height, out_width


def _bank_shape(height, width, kernel, padding) -> tuple[int, int]:
    """``(bw, depth)``: a bank's words per bank row, and its words per buffer."""
    kh, kw = kernel
    pt, pl, pb, pr = padding
    bw = -(-(width + pl + pr) // kw)
    return bw, -(-(height + pt + pb) // kh) * bw


def _bank_signature(port, height, width, channels, kernel, padding, value_bits=8):
    """The ``kh x kw`` array of bank ports (``port``: ReadPort or WritePort), both buffers."""
    _, depth = _bank_shape(height, width, kernel, padding)
    sig = port.Signature(addr_width=ceil_log2(2 * depth), shape=unsigned(value_bits * channels))
    return In(sig).array(*kernel)


def _window_layout(channels: int, kernel, value_bits: int = 8) -> data.StructLayout:
    """One window as :class:`BankWalker` hands it to :class:`FieldPacker`."""
    kh, kw = kernel
    return data.StructLayout({
        "words": data.ArrayLayout(data.ArrayLayout(unsigned(value_bits * channels), kw),
                                  kh),  # per bank
        "yr": range(kh),  # window top row mod kh
        "xr": range(kw),  # window left column mod kw
        "mask": kh * kw,  # tap (dy, dx) inside the map
        "last": 1,
        "end": 1,  # the frame's last window
    })


class BankWriter(wiring.Component):
    """Write side of the banked frame store: each input position into its bank.

    The pixel at padded coordinates ``(y, x)`` goes to bank ``(y mod kh,
    x mod kw)`` at ``buffer * depth + (y div kh) * ceil(Wp / kw) + x div kw``;
    frame ``f`` to buffer ``f mod 2``. A buffer is written from its frame's
    ``end`` until the read side ``clear``\\ s it; the input waits while its
    buffer is written and not released this cycle. ``i.ready`` is a register
    (a skid register holds the beat offered while the input waits), and a
    position is written to its bank the cycle after it is taken.

    Parameters
    ----------
    height, width, channels : int
        The input map.
    kernel : tuple of int
    padding : tuple of int
        ``(top, left, bottom, right)``.

    Members
    -------
    i : In(stream.Signature(dense_layout(C)))
        Positions in raster order, ``end`` on the frame's last.
    banks : In(WritePort.Signature(...)).array(kh, kw)
    written : Out(2)
        Buffer written, its frame's last position included.
    clear : In(2)
        The read side releases a buffer.
    """

    def __init__(self, height: int, width: int, channels: int, *, kernel, padding,
                 value_bits: int = 8):
        _check_geometry(height, width, channels, kernel, (1, 1), padding)
        self.height, self.width, self.channels = height, width, channels
        self.kernel, self.padding = kernel, padding
        self.in_layout = dense_layout(channels, signed(value_bits))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "banks": _bank_signature(WritePort, height, width, channels, kernel, padding,
                                     value_bits),
            "written": Out(2),
            "clear": In(2),
        })

    def elaborate(self, platform):
        m = Module()
        H, W = self.height, self.width
        kh, kw = self.kernel
        pt, pl, pb, pr = self.padding
        Hp, Wp = H + pt + pb, W + pl + pr
        bw, depth = _bank_shape(H, W, self.kernel, self.padding)
        full = Signal(2)
        filled = Signal(2)  # the frame's last position taken this cycle
        filled_r = Signal(2)  # ... and written to its bank this cycle
        m.d.sync += [filled_r.eq(filled), full.eq((full | filled_r) & ~self.clear)]
        m.d.comb += self.written.eq(full | filled_r)

        # padded coordinates, kept as quotient and remainder
        in_buf = Signal()
        init_y, init_x = divmod(pt, kh), divmod(pl, kw)  # the first real pixel: (pt, pl)
        wy_q = Signal(range(Hp // kh + 2), init=init_y[0])
        wy_r = Signal(range(kh), init=init_y[1])
        wx_q = Signal(range(Wp // kw + 2), init=init_x[0])
        wx_r = Signal(range(kw), init=init_x[1])
        wx = Signal(range(W + 1))
        # The input's ready and the banks' write enables are functions of registers,
        # so the reader's release (a long way off on a large part) ends here: the
        # input goes through a skid register, and a position is written the cycle
        # after it is taken (a bank of LUT RAM is many cells behind one write-enable
        # tree). A buffer the reader releases this cycle can be taken at once: its
        # last read is in this cycle, before the write.
        skid_valid = Signal()
        skid = Signal.like(self.i.payload)
        valid = Signal()
        pos = Signal.like(self.i.payload)
        ready = Signal()
        m.d.comb += [self.i.ready.eq(~skid_valid),
                     valid.eq(skid_valid | self.i.valid),
                     pos.eq(Mux(skid_valid, skid, self.i.payload)),
                     ready.eq(~full.bit_select(in_buf, 1) | self.clear.bit_select(in_buf, 1))]
        with m.If(skid_valid):
            m.d.sync += skid_valid.eq(~ready)
        with m.Elif(self.i.valid & ~ready):
            m.d.sync += [skid_valid.eq(1), skid.eq(self.i.payload)]
        take = Signal()
        m.d.comb += take.eq(valid & ready)
        waddr = Signal(range(2 * depth))
        # shifted adds, not DSP blocks, for the constant factors
        m.d.comb += waddr.eq(Mux(in_buf, depth, 0) + const_mul(wy_q, bw) + wx_q)
        w_addr = Signal.like(waddr)
        w_data = Signal(self.banks[0][0].data.shape())
        m.d.sync += [w_addr.eq(waddr), w_data.eq(pos.data.as_value())]
        for r in range(kh):
            for c in range(kw):
                wp = self.banks[r][c]
                w_en = Signal(name=f"w_en_{r}_{c}")
                m.d.sync += w_en.eq(take & (wy_r == r) & (wx_r == c))
                m.d.comb += [wp.addr.eq(w_addr), wp.data.eq(w_data), wp.en.eq(w_en)]

        def step(q, rem, mod):
            return [rem.eq(Mux(rem == mod - 1, 0, rem + 1)), q.eq(Mux(rem == mod - 1, q + 1, q))]

        with m.If(take):
            with m.If(pos.end):
                m.d.sync += [in_buf.eq(~in_buf), wx.eq(0), wy_q.eq(init_y[0]), wy_r.eq(init_y[1]),
                             wx_q.eq(init_x[0]), wx_r.eq(init_x[1])]
                m.d.comb += filled.bit_select(in_buf, 1).eq(1)
            with m.Elif(wx == W - 1):
                m.d.sync += [wx.eq(0), wx_q.eq(init_x[0]), wx_r.eq(init_x[1])]
                m.d.sync += step(wy_q, wy_r, kh)
            with m.Else():
                m.d.sync += wx.eq(wx + 1)
                m.d.sync += step(wx_q, wx_r, kw)
        return m


class BankWalker(wiring.Component):
    """Read side of the banked frame store: every bank read once per output position.

    Once a buffer is ``written`` it walks the output positions (raster
    order), one per cycle the ``win`` stream takes, reading each bank's
    pixel of the window; the frame's last window releases the buffer
    (``clear``) and the walk goes straight on to the other buffer if its
    frame is there. Every bank's read address is a register (one adder of a
    row part and a column part, both registers), so no comparator or adder
    chain sits before a bank.

    Parameters
    ----------
    height, width, channels : int
        The input map.
    kernel, stride : tuple of int
    padding : tuple of int
        ``(top, left, bottom, right)``.

    Members
    -------
    written : In(2)
        Buffers written (:attr:`BankWriter.written`).
    clear : Out(2)
        Release a buffer: its frame's last window is read.
    banks : In(ReadPort.Signature(...)).array(kh, kw)
    win : Out(stream.Signature(window_layout))
        One window: every bank's word, the window's rotation ``(y0 mod kh,
        x0 mod kw)``, which taps are inside the map, and ``end`` on the
        frame's last.
    """

    def __init__(self, height: int, width: int, channels: int, *, kernel, stride, padding,
                 value_bits: int = 8):
        self.out_height, self.out_width = _check_geometry(height, width, channels, kernel,
                                                          stride, padding)
        self.height, self.width, self.channels = height, width, channels
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.window_layout = _window_layout(channels, kernel, value_bits)
        super().__init__({
            "written": In(2),
            "clear": Out(2),
            "banks": _bank_signature(ReadPort, height, width, channels, kernel, padding,
                                     value_bits),
            "win": Out(stream.Signature(self.window_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        H, W = self.height, self.width
        kh, kw = self.kernel
        sh, sw = self.stride
        pt, pl, pb, pr = self.padding
        Hp, Wp = H + pt + pb, W + pl + pr
        Ho, Wo = self.out_height, self.out_width
        bw, depth = _bank_shape(H, W, self.kernel, self.padding)
        out_buf = Signal()
        walking = Signal()
        oy, ox = Signal(range(Ho)), Signal(range(Wo))
        y0, x0 = Signal(range(Hp + 1)), Signal(range(Wp + 1))  # padded top-left
        y_q, y_r = Signal(range(Hp // kh + 2)), Signal(range(kh))  # y0 = y_q * kh + y_r
        x_q, x_r = Signal(range(Wp // kw + 2)), Signal(range(kw))
        b_valid, b_last, b_end, b_yr, b_xr = Signal(), Signal(), Signal(), Signal(range(kh)), \
            Signal(range(kw))
        b_mask = Signal(kh * kw)  # tap (dy, dx) inside the map
        adv = self.win.ready
        w = self.win.payload
        m.d.comb += [self.win.valid.eq(b_valid), w.yr.eq(b_yr), w.xr.eq(b_xr), w.mask.eq(b_mask),
                     w.last.eq(b_last), w.end.eq(b_end)]
        m.d.comb += [w.words[r][c].eq(self.banks[r][c].data) for r in range(kh) for c in range(kw)]

        # (ox == Wo - 1) and the frame's last position, kept as registers beside ox, oy:
        # they choose the next coordinates, so no comparator sits before the addresses.
        x_end = Signal(init=int(Wo == 1))
        last_pos = Signal(init=int(Ho == 1 and Wo == 1))
        issue = Signal()
        m.d.comb += issue.eq(walking & adv)
        ready_buf = self.written
        # The window's coordinates (y_q, y_r, x_q, x_r) and buffer are registers whose next
        # values are computed here, so every bank's read address is a register too,
        # computed from those next values: no adder between an address and its bank.
        n_yq, n_yr, n_xq, n_xr = Signal.like(y_q), Signal.like(y_r), Signal.like(x_q), \
            Signal.like(x_r)
        n_buf = Signal()
        m.d.comb += [n_yq.eq(y_q), n_yr.eq(y_r), n_xq.eq(x_q), n_xr.eq(x_r), n_buf.eq(out_buf)]
        m.d.sync += [y_q.eq(n_yq), y_r.eq(n_yr), x_q.eq(n_xq), x_r.eq(n_xr), out_buf.eq(n_buf)]
        restart = [oy.eq(0), ox.eq(0), y0.eq(0), x0.eq(0), x_end.eq(Wo == 1),
                   last_pos.eq(Ho == 1 and Wo == 1)]
        restart_next = [n_yq.eq(0), n_yr.eq(0), n_xq.eq(0), n_xr.eq(0)]
        with m.If(~walking & ready_buf.bit_select(out_buf, 1)):
            m.d.sync += [walking.eq(1), *restart]
            m.d.comb += restart_next
        # Bank (r, c)'s word of the window is row part + column part: buffer * depth +
        # (y_q + (r < y_r)) * bw and x_q + (c < x_r). Both are registers: a step of the
        # window by s adds to bank row r the number of rows y in [y0, y0 + s) with
        # y mod kh == r (a constant per y_r), and likewise per column, so one adder sits
        # before each bank address.
        row_part = [Signal(range(2 * depth), name=f"row_part_{r}") for r in range(kh)]
        col_part = [Signal(range(bw + 1), name=f"col_part_{c}") for c in range(kw)]

        def crossed(rem, mod, s, i):  # rows (columns) y in [y0, y0 + s) with y % mod == i
            return Array(sum((yr + j) % mod == i for j in range(s)) for yr in range(mod))[rem]

        with m.If((~walking & ready_buf.bit_select(out_buf, 1)) | (issue & last_pos)):
            m.d.sync += [rp.eq(Mux(n_buf, depth, 0)) for rp in row_part]
            m.d.sync += [cp.eq(0) for cp in col_part]
        with m.Elif(issue & x_end):
            m.d.sync += [rp.eq(rp + const_mul(crossed(y_r, kh, sh, r), bw))
                         for r, rp in enumerate(row_part)]
            m.d.sync += [cp.eq(0) for cp in col_part]
        with m.Elif(issue):
            m.d.sync += [cp.eq(cp + crossed(x_r, kw, sw, c)) for c, cp in enumerate(col_part)]
        for r in range(kh):
            for c in range(kw):
                m.d.comb += [self.banks[r][c].addr.eq(row_part[r] + col_part[c]),
                             self.banks[r][c].en.eq(adv)]
        mask = []
        for dy in range(kh):
            for dx in range(kw):
                y, x = y0 + dy, x0 + dx
                mask.append((y >= pt) & (y < pt + H) & (x >= pl) & (x < pl + W))
        with m.If(adv):
            m.d.sync += [b_valid.eq(issue), b_last.eq(1), b_end.eq(last_pos), b_yr.eq(y_r),
                         b_xr.eq(x_r), b_mask.eq(Cat(*mask))]
        with m.If(issue):
            with m.If(last_pos):
                # go straight on to the other buffer if its frame is there
                m.d.sync += [walking.eq(ready_buf.bit_select(~out_buf, 1)), *restart]
                m.d.comb += [n_buf.eq(~out_buf), *restart_next]
                m.d.comb += self.clear.bit_select(out_buf, 1).eq(1)
            with m.Elif(x_end):
                m.d.sync += [ox.eq(0), x0.eq(0), oy.eq(oy + 1), y0.eq(y0 + sh),
                             x_end.eq(Wo == 1), last_pos.eq((oy == Ho - 2) & (Wo == 1))]
                m.d.comb += [n_xq.eq(0), n_xr.eq(0), n_yq.eq(y_q + (y_r + sh) // kh),
                             n_yr.eq((y_r + sh) % kh)]
            with m.Else():
                m.d.sync += [ox.eq(ox + 1), x0.eq(x0 + sw), x_end.eq(ox == Wo - 2),
                             last_pos.eq((oy == Ho - 1) & (ox == Wo - 2))]
                m.d.comb += [n_xq.eq(x_q + (x_r + sw) // kw), n_xr.eq((x_r + sw) % kw)]
        return m


class FieldPacker(wiring.Component):
    """One window's bank words rotated to their taps, the padding zeroed, as one dense beat.

    Tap ``(dy, dx)`` of a window with rotation ``(yr, xr)`` is bank
    ``((dy + yr) mod kh, (dx + xr) mod kw)``'s word. The rotation is two
    registered steps: the bank rows to the tap rows, then the columns. (In
    one combinational step, yosys and ABC map the ``kh * kw``-way choice of
    every tap bit into about four times the LUTs of the two ``kh``- and
    ``kw``-way multiplexers and the register between them: 4,900 LUT4 and
    3,200 PFUMX/L6MUX21 against 1,608 LUT4 for a 5x5 kernel of int8, skid
    register included.) The
    output goes through a skid register (:func:`~cosparse.hw.util.skid_output`):
    ``win.ready`` is a function of registers, one beat per cycle, latency three
    cycles.

    Parameters
    ----------
    channels : int
        ``C``, elements per pixel.
    kernel : tuple of int

    Members
    -------
    win : In(stream.Signature(window_layout))
        The windows (:attr:`BankWalker.win`).
    o : Out(stream.Signature(dense_layout(kh * kw * C)))
        One beat per window (``last`` set), ``end`` on the frame's last.
    """

    def __init__(self, channels: int, *, kernel, value_bits: int = 8):
        check_int("channels", channels, 1)
        _check_pair("kernel", kernel)
        self.channels, self.kernel = channels, kernel
        self.window_layout = _window_layout(channels, kernel, value_bits)
        self.out_layout = dense_layout(kernel[0] * kernel[1] * channels, signed(value_bits))
        super().__init__({"win": In(stream.Signature(self.window_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    def elaborate(self, platform):
        m = Module()
        kh, kw = self.kernel
        w = self.win.payload
        # Stage 1: each tap row's kw words, the bank rows rotated by yr.
        row_shape = w.words[0][0].shape()
        rows = [[Signal(row_shape, name=f"row_{dy}_{x}") for x in range(kw)] for dy in range(kh)]
        xr, flags1 = Signal.like(w.xr), Signal(kh * kw + 2)
        s1_valid = Signal()
        adv = Signal()
        with m.If(adv):
            m.d.sync += [s1_valid.eq(self.win.valid), xr.eq(w.xr),
                         flags1.eq(Cat(w.mask, w.last, w.end))]
            m.d.sync += [rows[dy][x].eq(mux_tree([w.words[(dy + r) % kh][x] for r in range(kh)],
                                                w.yr))
                         for dy in range(kh) for x in range(kw)]
        # Stage 2: the columns rotated by xr. The padding is zeroed after this register,
        # in front of the skid: zeroing inside a register with an enable doubles the
        # LUTs yosys maps a stage into.
        taps = [Signal(row_shape, name=f"tap_{t}") for t in range(kh * kw)]
        flags = Signal(kh * kw + 2)
        s2_valid = Signal()
        adv2 = Signal()
        with m.If(adv2):
            m.d.sync += [s2_valid.eq(s1_valid), flags.eq(flags1)]
            m.d.sync += [taps[dy * kw + dx].eq(mux_tree([rows[dy][(dx + r) % kw]
                                                        for r in range(kw)], xr))
                         for dy in range(kh) for dx in range(kw)]
        data = Cat(*(Mux(flags[t], taps[t], 0) for t in range(kh * kw)))
        # Each tap is a word of C channels: the taps together are the beat's elements.
        out = typed_payload(m, self.o, data=data, last=flags[kh * kw], end=flags[kh * kw + 1])
        ready = skid_output(m, self.o, s2_valid, out)
        m.d.comb += [adv2.eq(ready | ~s2_valid), adv.eq(adv2 | ~s1_valid),
                     self.win.ready.eq(adv)]
        return m


class DenseWindow(wiring.Component):
    """Receptive fields of a 2-D convolution over a dense ``(H, W, C)`` map.

    Parameters
    ----------
    height, width : int
        Input map size.
    channels : int
        ``C``; one input beat carries one position (input width ``C``).
    kernel, stride : tuple of int
    padding : tuple of int
        ``(top, left, bottom, right)``, each smaller than the kernel.

    Members
    -------
    i : In(stream.Signature(dense_layout(C)))
        Positions in raster order, ``end`` on the frame's last.
    o : Out(stream.Signature(dense_layout(kh * kw * C)))
        One beat per output position (``last`` set), raster order, ``end``
        on the frame's last.
    """

    def __init__(self, height: int, width: int, channels: int, *, kernel=(3, 3), stride=(1, 1),
                 padding=(0, 0, 0, 0), value_bits: int = 8):
        self.out_height, self.out_width = _check_geometry(height, width, channels, kernel,
                                                          stride, padding)
        self.value_bits = check_int("value_bits", value_bits, 2, 16)
        self.height, self.width, self.channels = height, width, channels
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.taps = kernel[0] * kernel[1] * channels
        self.in_layout = dense_layout(channels, signed(value_bits))
        self.out_layout = dense_layout(self.taps, signed(value_bits))
        super().__init__({"i": In(stream.Signature(self.in_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    @property
    def cycles_per_frame(self) -> int:
        """Steady state: the larger of the writes and the reads of a frame."""
        return max(self.height * self.width, self.out_height * self.out_width)

    def elaborate(self, platform):
        m = Module()
        H, W, C = self.height, self.width, self.channels
        kh, kw = self.kernel
        _, depth = _bank_shape(H, W, self.kernel, self.padding)
        wports, rports = [], []
        for r in range(kh):
            for c in range(kw):
                bank = Memory(shape=unsigned(self.value_bits * C), depth=2 * depth, init=[])
                m.submodules[f"bank_{r}_{c}"] = bank
                wports.append(bank.write_port())
                rports.append(bank.read_port())
        vb = self.value_bits
        m.submodules.writer = writer = BankWriter(H, W, C, kernel=self.kernel,
                                                  padding=self.padding, value_bits=vb)
        m.submodules.walker = walker = BankWalker(H, W, C, kernel=self.kernel,
                                                  stride=self.stride, padding=self.padding,
                                                  value_bits=vb)
        m.submodules.packer = packer = FieldPacker(C, kernel=self.kernel, value_bits=vb)
        for r in range(kh):
            for c in range(kw):
                wiring.connect(m, writer.banks[r][c], wports[r * kw + c])
                wiring.connect(m, walker.banks[r][c], rports[r * kw + c])
        m.d.comb += [walker.written.eq(writer.written), writer.clear.eq(walker.clear)]
        wiring.connect(m, wiring.flipped(self.i), writer.i)
        wiring.connect(m, walker.win, packer.win)
        wiring.connect(m, packer.o, wiring.flipped(self.o))
        return m
