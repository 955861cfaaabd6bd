"""Flatten in hardware: a map's per-position groups become one vector group.

The IR's :class:`~cosparse.compiler.ir.Flatten` turns an ``(H, W, C)`` map
into the vector ``(H * W * C,)`` in HWC order. On a stream that only changes
the group boundaries (and, for sparse streams, the indices): element ``c`` of
position ``p`` becomes element ``p * C + c`` of the frame's single group.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .util import bits, check_int, skid_output, typed_payload
from .streams import dense_layout, sparse_layout

__all__ = ["SparseFlatten", "DenseFlatten"]


class SparseFlatten(wiring.Component):
    """Sparse map (one group per position) to one sparse vector group per frame.

    Each entry's index becomes ``position * C + channel``; beats that carry no
    entry are dropped, except the frame's final beat, which closes the
    vector group (``last`` and ``end``), empty or not. Entry order stays
    increasing, as positions arrive in raster order.

    Throughput: one beat per cycle, latency one cycle (a skid output).

    Parameters
    ----------
    positions : int
        ``H * W``, groups per input frame.
    channels : int
        ``C``, elements per position.
    entries : int
        ``R``, entries per beat (in and out).

    Members
    -------
    i : In(stream.Signature(sparse_layout(R, bits(C))))
    o : Out(stream.Signature(sparse_layout(R, bits(positions * C))))
    """

    def __init__(self, positions: int, channels: int, *, entries: int = 8, value_bits: int = 8):
        check_int("positions", positions, 1)
        check_int("channels", channels, 1)
        check_int("entries (R)", entries, 1, 64)
        self.value_bits = check_int("value_bits", value_bits, 2, 16)
        self.positions, self.channels, self.entries = positions, channels, entries
        self.in_layout = sparse_layout(entries, bits(channels), signed(value_bits))
        self.out_layout = sparse_layout(entries, bits(positions * channels), signed(value_bits))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        C, R = self.channels, self.entries
        ob = bits(self.positions * C)
        p = self.i.payload
        base = Signal(range(self.positions * C + 1))  # index of the position's channel 0
        ents = [Cat((base + p.entries[r].index)[:ob], p.entries[r].value) for r in range(R)]
        keep = (p.count != 0) | p.end
        adv = skid_output(m, self.o, self.i.valid & keep,
                          typed_payload(m, self.o, entries=ents, count=p.count, last=p.end,
                                        end=p.end))
        m.d.comb += self.i.ready.eq(adv)
        with m.If(self.i.valid & adv & p.last):
            m.d.sync += base.eq(Mux(p.end, 0, base + C))
        return m


class DenseFlatten(wiring.Component):
    """Dense map (one group per position) to one dense vector group per frame.

    Needs ``C % D == 0`` so that no padding lanes sit inside the vector: then
    only ``last`` changes (it becomes ``end``). Combinational, no latency.

    Parameters
    ----------
    positions, channels : int
    width : int
        ``D``, elements per beat; must divide ``channels``.

    Members
    -------
    i : In(stream.Signature(dense_layout(D)))
    o : Out(stream.Signature(dense_layout(D)))
    """

    def __init__(self, positions: int, channels: int, *, width: int = 8, value_bits: int = 8):
        check_int("positions", positions, 1)
        check_int("channels", channels, 1)
        check_int("width (D)", width, 1, 256)
        self.value_bits = check_int("value_bits", value_bits, 2, 16)
        if channels % width:
            raise ValueError(f"a dense flatten needs the width {width} to divide the "
                             f"{channels} channels (no padding lanes inside the vector)")
        self.positions, self.channels, self.width = positions, channels, width
        self.in_layout = self.out_layout = dense_layout(width, signed(value_bits))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.o.valid.eq(self.i.valid), self.i.ready.eq(self.o.ready),
                     self.o.payload.data.eq(self.i.payload.data),
                     self.o.payload.last.eq(self.i.payload.end),
                     self.o.payload.end.eq(self.i.payload.end)]
        return m
