"""Dense window generator: every receptive field of a conv over a dense map, one per cycle.

A first layer sees a dense map with few channels (an image: ``C = 1``). The
:class:`~cosparse.hw.window.SparseWindow` sends one tap per beat, so a 5x5
kernel costs 25 cycles per output position whatever the engine's ``R``.
This unit reads a whole receptive field per cycle and emits it as one dense
beat of ``kh * kw * C`` elements in ``(ky, kx, c)`` order (zeros for the
padding); a :class:`~cosparse.hw.adapters.ZeroSkip` behind it packs the
non-zero ones into ``R``-entry beats for the engine, so a position costs
``ceil(active / R)`` cycles.

Structure
---------
A double-buffered frame store split into ``kh x kw`` banks: the pixel at
padded coordinates ``(y, x)`` lives in bank ``(y mod kh, x mod kw)`` at
address ``(y div kh) * ceil(Wp / kw) + x div kw``. The ``kh x kw`` pixels of
any window fall in distinct banks, so one read of every bank yields the
window; a rotation by ``(y0 mod kh, x0 mod kw)`` puts each bank's pixel at
its tap. Reading frame ``f`` overlaps writing ``f + 1`` into the other half.

Throughput
----------
One input position per cycle (``H * W`` cycles per frame written) and one
output position per cycle (``Ho * Wo`` read), overlapped across frames;
latency: a frame, plus 3 cycles.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .util import check_int, const_mul, skid_output
from .streams import dense_layout

__all__ = ["DenseWindow"]


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
                 padding=(0, 0, 0, 0)):
        for name, v in (("height", height), ("width", width), ("channels", channels)):
            check_int(name, v, 1)
        if not (isinstance(kernel, tuple) and len(kernel) == 2 and all(
                isinstance(k, int) and k >= 1 for k in kernel)):
            raise ValueError(f"kernel must be two positive integers, got {kernel!r}")
        if not (isinstance(stride, tuple) and len(stride) == 2 and all(
                isinstance(s, int) and s >= 1 for s in stride)):
            raise ValueError(f"stride must be two positive integers, got {stride!r}")
        kh, kw = kernel
        if not (isinstance(padding, tuple) and len(padding) == 4 and
                all(isinstance(p, int) and 0 <= p < k for p, k in zip(padding, (kh, kw, kh, kw)))):
            raise ValueError(f"padding must be (top, left, bottom, right), each smaller than the "
                             f"kernel {kernel}, got {padding!r}")
        self.height, self.width, self.channels = height, width, channels
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.out_height = (height + padding[0] + padding[2] - kh) // stride[0] + 1
        self.out_width = (width + padding[1] + padding[3] - kw) // stride[1] + 1
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError(f"kernel {kernel} does not fit the padded {height}x{width} map")
        self.taps = kh * kw * channels
        self.in_layout = dense_layout(channels, signed(8))
        self.out_layout = dense_layout(self.taps, signed(8))
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
        sh, sw = self.stride
        pt, pl, pb, pr = self.padding
        Hp, Wp = H + pt + pb, W + pl + pr
        Ho, Wo = self.out_height, self.out_width
        bw = -(-Wp // kw)  # bank words per bank row
        depth = -(-Hp // kh) * bw  # words per bank and buffer
        pix = 8 * C

        banks = [[Memory(shape=unsigned(pix), depth=2 * depth, init=[]) for _ in range(kw)]
                 for _ in range(kh)]
        wports, rports = [], []
        for r in range(kh):
            for c in range(kw):
                m.submodules[f"bank_{r}_{c}"] = banks[r][c]
                wports.append(banks[r][c].write_port())
                rports.append(banks[r][c].read_port())

        full = Signal(2)
        clear = Signal(2)
        filled = Signal(2)
        m.d.sync += full.eq((full | filled) & ~clear)

        # ---------------- write side: padded coordinates, kept as quotient and remainder
        in_buf = Signal()
        init_y, init_x = divmod(pt, kh), divmod(pl, kw)  # the first real pixel: (pt, pl)
        wy_q = Signal(range(Hp // kh + 2), init=init_y[0])
        wy_r = Signal(range(kh), init=init_y[1])
        wx_q = Signal(range(Wp // kw + 2), init=init_x[0])
        wx_r = Signal(range(kw), init=init_x[1])
        wx = Signal(range(W + 1))
        # A buffer the reader releases this cycle can be written at once.
        m.d.comb += self.i.ready.eq(~full.bit_select(in_buf, 1) | clear.bit_select(in_buf, 1))
        take = Signal()
        m.d.comb += take.eq(self.i.valid & self.i.ready)
        waddr = Signal(range(2 * depth))
        # shifted adds, not DSP blocks, for the constant factors
        m.d.comb += waddr.eq(Mux(in_buf, depth, 0) + const_mul(wy_q, bw) + wx_q)
        for r in range(kh):
            for c in range(kw):
                wp = wports[r * kw + c]
                m.d.comb += [wp.addr.eq(waddr), wp.data.eq(self.i.payload.data.as_value()),
                             wp.en.eq(take & (wy_r == r) & (wx_r == c))]

        def step(q, rem, mod):
            return [rem.eq(Mux(rem == mod - 1, 0, rem + 1)), q.eq(Mux(rem == mod - 1, q + 1, q))]

        with m.If(take):
            with m.If(self.i.payload.end):
                m.d.sync += [in_buf.eq(~in_buf), wx.eq(0), wy_q.eq(init_y[0]), wy_r.eq(init_y[1]),
                             wx_q.eq(init_x[0]), wx_r.eq(init_x[1])]
                m.d.comb += filled.bit_select(in_buf, 1).eq(1)
            with m.Elif(wx == W - 1):
                m.d.sync += [wx.eq(0), wx_q.eq(init_x[0]), wx_r.eq(init_x[1])]
                m.d.sync += step(wy_q, wy_r, kh)
            with m.Else():
                m.d.sync += wx.eq(wx + 1)
                m.d.sync += step(wx_q, wx_r, kw)

        # ---------------- read side, stage A: issue the reads of one window
        out_buf = Signal()
        walking = Signal()
        oy, ox = Signal(range(Ho)), Signal(range(Wo))
        y0, x0 = Signal(range(Hp + 1)), Signal(range(Wp + 1))  # padded top-left
        y_q, y_r = Signal(range(Hp // kh + 2)), Signal(range(kh))  # y0 = y_q * kh + y_r
        x_q, x_r = Signal(range(Wp // kw + 2)), Signal(range(kw))
        b_valid, b_last, b_end, b_yr, b_xr = Signal(), Signal(), Signal(), Signal(range(kh)), \
            Signal(range(kw))
        b_mask = Signal(kh * kw)  # tap (dy, dx) inside the map
        adv = Signal()

        # (ox == Wo - 1) and the frame's last position, kept as registers beside ox, oy:
        # they choose the next coordinates, so no comparator sits before the addresses.
        x_end = Signal(init=int(Wo == 1))
        last_pos = Signal(init=int(Ho == 1 and Wo == 1))
        issue = Signal()
        m.d.comb += issue.eq(walking & adv)
        ready_buf = full | filled  # written, or completed this cycle
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
        # before each bank address (from the next coordinates it was four: 89 MHz).
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
                rp = rports[r * kw + c]
                m.d.comb += [rp.addr.eq(row_part[r] + col_part[c]), rp.en.eq(adv)]
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
                m.d.comb += clear.bit_select(out_buf, 1).eq(1)
            with m.Elif(x_end):
                m.d.sync += [ox.eq(0), x0.eq(0), oy.eq(oy + 1), y0.eq(y0 + sh),
                             x_end.eq(Wo == 1), last_pos.eq((oy == Ho - 2) & (Wo == 1))]
                m.d.comb += [n_xq.eq(0), n_xr.eq(0), n_yq.eq(y_q + (y_r + sh) // kh),
                             n_yr.eq((y_r + sh) % kh)]
            with m.Else():
                m.d.sync += [ox.eq(ox + 1), x0.eq(x0 + sw), x_end.eq(ox == Wo - 2),
                             last_pos.eq((oy == Ho - 1) & (ox == Wo - 2))]
                m.d.comb += [n_xq.eq(x_q + (x_r + sw) // kw), n_xr.eq((x_r + sw) % kw)]

        # ---------------- stage B: rotate the banks' pixels to their taps, mask the padding
        data = [[rports[r * kw + c].data for c in range(kw)] for r in range(kh)]
        taps = []
        for dy in range(kh):
            for dx in range(kw):
                sel = Array(Array(data[(dy + yr) % kh][(dx + xr) % kw] for xr in range(kw))
                            for yr in range(kh))[b_yr][b_xr]
                taps.append(Mux(b_mask[dy * kw + dx], sel, 0))
        m.d.comb += adv.eq(skid_output(m, self.o, b_valid, Cat(*taps, b_last, b_end)))
        return m
