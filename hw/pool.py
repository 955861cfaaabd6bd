"""Max pooling over (H, W) windows of a feature map: dense and sparse streams.

The rule is the golden model's for an IR ``MaxPool`` layer (docs/ir.md,
'Integer semantics'): the max over each window, no padding; rows and columns beyond the last whole
window are dropped. On a sparse map an inactive element takes part as 0, so
a negative value does not survive a window that also holds an inactive
element. Only non-overlapping windows (``stride == kernel``) are built.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .adapters import Densify, ZeroSkip
from .util import bits, check_int, skid_output, typed_payload
from .streams import dense_layout, sparse_layout

__all__ = ["MaxPool", "SparseMaxPool"]


def _pool_params(height, width_px, channels, kernel, stride) -> tuple[int, int]:
    """Validate the map and window; return the output size ``(Ho, Wo)``."""
    check_int("height", height, 1)
    check_int("width_px", width_px, 1)
    check_int("channels", channels, 1)
    for name, v in (("kernel", kernel), ("stride", stride)):
        if not (isinstance(v, tuple) and len(v) == 2 and
                all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)):
            raise ValueError(f"{name} must be a tuple of two positive integers, got {v!r}")
    if stride != kernel:
        raise ValueError(f"only non-overlapping windows are supported (stride == kernel), "
                         f"got kernel {kernel} and stride {stride}")
    kh, kw = kernel
    if kh > height or kw > width_px:
        raise ValueError(f"window {kernel} larger than the {height}x{width_px} map")
    return height // kh, width_px // kw


class MaxPool(wiring.Component):
    """Max pooling of a dense (H, W, C) map, non-overlapping windows.

    Positions arrive in raster order, each ``ceil(C / D)`` beats (``last`` on
    a position's final beat, ``end`` on the frame's). The output is the
    pooled map in the same form, ``Ho x Wo`` positions with ``Ho = H // kh``,
    ``Wo = W // kw``.

    A row buffer of ``Wo * ceil(C / D)`` words holds the partial maxima of
    the current output row. One input beat per cycle, no bubbles:
    ``H * W * ceil(C / D)`` cycles per frame; an output position leaves
    ``ceil(C / D)`` beats on consecutive cycles when its window completes,
    latency 4 cycles. See docs/hardware.md, 'Max pool'.

    Parameters
    ----------
    height, width_px : int
        Input map size ``H``, ``W``.
    channels : int
        ``C``, channels per position.
    kernel, stride : tuple of int
        Window ``(kh, kw)`` and stride; the stride must equal the kernel.
    width : int
        ``D``, elements per beat.
    elem_bits : int
        Signed width of an element (8: activations; wider: accumulators pooled
        before their requantization, which is monotonic, so the two commute).

    Members
    -------
    i : In(stream.Signature(dense_layout(D, signed(elem_bits))))
    o : Out(stream.Signature(dense_layout(D, signed(elem_bits))))

    Raises
    ------
    ValueError
        A size is not a positive integer, the stride differs from the
        kernel (overlapping or gapped windows), or the window does not fit
        the map.
    """

    def __init__(self, height: int, width_px: int, channels: int, *, kernel=(2, 2),
                 stride=(2, 2), width: int = 8, elem_bits: int = 8):
        self.out_height, self.out_width = _pool_params(height, width_px, channels, kernel, stride)
        check_int("width (D)", width, 1, 256)
        check_int("elem_bits", elem_bits, 2, 64)
        self.height, self.width_px, self.channels = height, width_px, channels
        self.kernel, self.stride, self.width = kernel, stride, width
        self.elem_bits = elem_bits
        self.beats = -(-channels // width)
        self.in_layout = dense_layout(width, signed(elem_bits))
        self.out_layout = dense_layout(width, signed(elem_bits))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    @property
    def cycles_per_frame(self) -> int:
        """Steady-state cycles per frame (input-bound)."""
        return self.height * self.width_px * self.beats

    @property
    def forward_distance(self) -> int:
        """The fewest beats between two beats that update one row-buffer word: the
        next pixel of a window reads its word ``B`` beats later; with a window one
        pixel wide, the next row reads it ``W * B`` beats later. Forwarding from
        the write-back stages (one to three beats) is built only where this is
        three or less."""
        kw = self.kernel[1]
        return self.beats * (1 if kw > 1 else self.width_px)

    def elaborate(self, platform):
        m = Module()
        H, W, D, B = self.height, self.width_px, self.width, self.beats
        E = self.elem_bits
        kh, kw = self.kernel
        Ho, Wo = self.out_height, self.out_width
        p = self.i.payload

        m.submodules.rows = rows = Memory(shape=unsigned(D * E), depth=Wo * B, init=[])
        wp = rows.write_port()
        rp = rows.read_port()

        adv = Signal()
        take = Signal()
        m.d.comb += [self.i.ready.eq(adv), take.eq(self.i.valid & adv)]

        # ---------------- position counters of the beat being accepted
        b = Signal(range(max(B, 2)))
        x, y = Signal(range(W)), Signal(range(H))
        dx, dy = Signal(range(kw)), Signal(range(kh))
        ox, oy = Signal(range(Wo + 1)), Signal(range(Ho + 1))  # Wo / Ho: dropped border
        row_base = Signal(range(max(Wo * B, 1) + B))  # ox * B
        with m.If(take):
            with m.If(p.end):
                m.d.sync += [b.eq(0), x.eq(0), y.eq(0), dx.eq(0), dy.eq(0), ox.eq(0),
                             oy.eq(0), row_base.eq(0)]
            with m.Elif(p.last | (b == B - 1)):
                m.d.sync += b.eq(0)
                with m.If(x == W - 1):
                    m.d.sync += [x.eq(0), dx.eq(0), ox.eq(0), row_base.eq(0)]
                    with m.If(y == H - 1):
                        m.d.sync += [y.eq(0), dy.eq(0), oy.eq(0)]
                    with m.Else():
                        m.d.sync += y.eq(y + 1)
                        with m.If(dy == kh - 1):
                            m.d.sync += [dy.eq(0), oy.eq(oy + 1)]
                        with m.Else():
                            m.d.sync += dy.eq(dy + 1)
                with m.Else():
                    m.d.sync += x.eq(x + 1)
                    with m.If(dx == kw - 1):
                        m.d.sync += [dx.eq(0), ox.eq(ox + 1), row_base.eq(row_base + B)]
                    with m.Else():
                        m.d.sync += dx.eq(dx + 1)
            with m.Else():
                m.d.sync += b.eq(b + 1)
        m.d.comb += [rp.addr.eq(row_base + b), rp.en.eq(adv)]

        # ---------------- S0: the accepted beat, its word read in flight
        s0 = {n: Signal(name=f"s0_{n}") for n in ("valid", "first", "emit", "last", "end")}
        s0_addr = Signal.like(rp.addr)
        s0_data = Signal(D * E)
        with m.If(adv):
            inside = (ox < Wo) & (oy < Ho)
            window_end = (dx == kw - 1) & (dy == kh - 1)
            m.d.sync += [
                s0["valid"].eq(self.i.valid & inside),
                s0["first"].eq((dx == 0) & (dy == 0)),
                s0["emit"].eq(window_end),
                s0["last"].eq(b == B - 1),
                s0["end"].eq(window_end & (b == B - 1) & (ox == Wo - 1) & (oy == Ho - 1)),
                s0_addr.eq(row_base + b),
                s0_data.eq(p.data.as_value()),
            ]

        # ---------------- S1: the beat with its stored partial maxima (registered)
        s1 = {n: Signal(name=f"s1_{n}") for n in s0}
        s1_addr = Signal.like(rp.addr)
        s1_data = Signal(D * E)
        s1_mem = Signal(D * E)  # the block RAM output, straight into a register
        best = Signal(D * E)  # S1's lane-wise max, written back or emitted
        writes = Signal()
        m.d.comb += writes.eq(s1["valid"] & ~s1["emit"])
        # S2: the write-back, from registers (the block RAM's inputs are far away).
        w_en = Signal()
        w_addr = Signal.like(rp.addr)
        w_data = Signal(D * E)
        with m.If(adv):
            m.d.sync += [s1[n].eq(s0[n]) for n in s0]
            m.d.sync += [s1_addr.eq(s0_addr), s1_data.eq(s0_data), s1_mem.eq(rp.data)]
            m.d.sync += [w_en.eq(writes), w_addr.eq(s1_addr), w_data.eq(best)]
        # Forwarding into S1: a beat that read its word fewer than three beats after
        # the word's last write gets the new value from S1 (it was not computed yet),
        # S2 (not written yet) or the write before (written in the cycle of the read).
        # Two beats that update one word are at least ``forward_distance`` beats
        # apart: only the stages that far back or farther are built.
        stages = [(writes, s1_addr, best), (w_en, w_addr, w_data)]
        if self.forward_distance <= 3:
            w2_en = Signal()  # the write before (in flight while the beat in S0 was read)
            w2_addr = Signal.like(rp.addr)
            w2_data = Signal(D * E)
            with m.If(adv):
                m.d.sync += [w2_en.eq(w_en), w2_addr.eq(w_addr), w2_data.eq(w_data)]
            stages.append((w2_en, w2_addr, w2_data))
        stages = stages[self.forward_distance - 1:]
        if stages:
            s1_fwd = Signal()
            s1_fwd_data = Signal(D * E)
            k0 = 4 - len(stages)  # the nearest stage built, in beats back
            fwd = [Signal(name=f"fwd{k0 + i}") for i in range(len(stages))]
            m.d.comb += [f.eq(en & (s0_addr == addr)) for f, (en, addr, _) in zip(fwd, stages)]
            fwd_data = stages[-1][2]
            for f, (_, _, value) in reversed(list(zip(fwd[:-1], stages[:-1]))):
                fwd_data = Mux(f, value, fwd_data)
            with m.If(adv):
                m.d.sync += [s1_fwd.eq(Cat(*fwd).any()), s1_fwd_data.eq(fwd_data)]
        # The stored maximum is the block RAM's word or a forwarded one; the new
        # element is compared with both at once, so the carry chains start at
        # registers and the selection follows them (the forwarding select does
        # not precede the comparison on the clock's critical path).
        lanes = []
        for d in range(D):
            new = s1_data[d * E:(d + 1) * E].as_signed()
            mem = s1_mem[d * E:(d + 1) * E].as_signed()
            lane = Mux(s1["first"] | (new > mem), new, mem)
            if stages:
                fwd_old = s1_fwd_data[d * E:(d + 1) * E].as_signed()
                lane = Mux(s1_fwd, Mux(s1["first"] | (new > fwd_old), new, fwd_old), lane)
            lanes.append(lane)
        m.d.comb += best.eq(Cat(*lanes))
        m.d.comb += [wp.addr.eq(w_addr), wp.data.eq(w_data), wp.en.eq(w_en)]
        # S2: an emitted maximum is registered before the output's skid buffer,
        # so the comparison's result does not travel to the next unit in its cycle.
        s2_valid, s2_last, s2_end = Signal(), Signal(), Signal()
        s2_data = Signal(D * E)
        with m.If(adv):
            m.d.sync += [s2_valid.eq(s1["valid"] & s1["emit"]), s2_last.eq(s1["last"]),
                         s2_end.eq(s1["end"]), s2_data.eq(best)]
        adv_ = skid_output(m, self.o, s2_valid,
                           typed_payload(m, self.o, data=s2_data, last=s2_last, end=s2_end))
        m.d.comb += adv.eq(adv_)
        return m


class SparseMaxPool(wiring.Component):
    """Max pooling of a sparse (H, W, C) map: Densify -> MaxPool -> ZeroSkip.

    Each input group is one position's active channels as ``(channel,
    value)``; the output is the pooled map, sparse, one group per output
    position (canonical packing, an empty group for a window without
    non-zeros). Inactive elements take part in the max as 0.

    The three units in a row, a ``D``-wide dense stream between them, paced
    by the densify: ``ceil(C / D)`` cycles per input position whose active
    channels fit one sparse beat, plus the boundary cycles of
    :class:`~cosparse.hw.adapters.Densify`. Latency from a window's last
    input beat to the last output beat of its pooled position:
    ``8 + ceil(C / D)`` cycles (one more when that position has more than
    ``R`` non-zeros). See docs/hardware.md, 'Max pool'.

    Parameters
    ----------
    height, width_px : int
        Input map size.
    channels : int
        ``C``, channels per position (indices of the entries).
    kernel, stride : tuple of int
        Window and stride (equal).
    entries : int
        ``R``, entries per sparse beat (input and output).
    width : int
        ``D``, elements per beat of the internal dense stream.

    Members
    -------
    i : In(stream.Signature(sparse_layout(R, bits(C), signed(V))))
    o : Out(stream.Signature(sparse_layout(R, bits(C), signed(V))))

    ``V`` is ``value_bits`` (8, or 9 for int9 activations).

    Raises
    ------
    ValueError
        As :class:`MaxPool`, or ``entries`` is not an integer from 1 to 64.
    """

    def __init__(self, height: int, width_px: int, channels: int, *, kernel=(2, 2),
                 stride=(2, 2), entries: int = 8, width: int = 8, value_bits: int = 8):
        self.out_height, self.out_width = _pool_params(height, width_px, channels, kernel, stride)
        check_int("entries (R)", entries, 1, 64)
        check_int("width (D)", width, 1, 256)
        self.height, self.width_px, self.channels = height, width_px, channels
        self.kernel, self.stride, self.entries, self.width = kernel, stride, entries, width
        self.beats = -(-channels // width)
        self.value_bits = check_int("value_bits", value_bits, 2, 16)
        self.in_layout = sparse_layout(entries, bits(channels), signed(value_bits))
        self.out_layout = self.in_layout
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def cycles_per_position(self, inner_boundaries: int = 0) -> int:
        """Steady-state cycles per input position (see :meth:`Densify.cycles_per_group`)."""
        return self.beats + inner_boundaries

    def elaborate(self, platform):
        m = Module()
        C, R, D = self.channels, self.entries, self.width
        vb = self.value_bits
        m.submodules.densify = dn = Densify(C, entries=R, width=D, value_bits=vb)
        m.submodules.pool = pool = MaxPool(self.height, self.width_px, C, kernel=self.kernel,
                                           stride=self.stride, width=D, elem_bits=vb)
        m.submodules.zero_skip = zs = ZeroSkip(C, width=D, entries=R, value_bits=vb)
        wiring.connect(m, wiring.flipped(self.i), dn.i)
        wiring.connect(m, dn.o, pool.i)
        wiring.connect(m, pool.o, zs.i)
        wiring.connect(m, zs.o, wiring.flipped(self.o))
        return m
