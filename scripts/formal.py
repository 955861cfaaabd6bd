#!/usr/bin/env python3
"""Formal proofs of the stream units' contracts (SymbiYosys, smtbmc with Yices or z3).

Each unit, at small parameters, inside :class:`cosparse.sim.formal.StreamHarness`:
its inputs follow the stream contract (assumed), and it is proven to keep it
on its outputs (valid and payload held until ready, ``end`` only with
``last``, groups and frames of the unit's size), never to emit more frames
than it took, and per unit:

- one-to-one units (requantizer, bias add, input offset, FIFO): beats out
  never exceed beats in, and the beats in flight stay within the unit's
  capacity (none lost or duplicated);
- sparse streams (in: assumed; out: proven): at most ``R`` entries a beat,
  none of value 0, no empty beat but an empty group's (with ``last``),
  indices below the group size and strictly increasing through a group;
- k-WTAs: no output group has more winners than its tie rule allows (``k``,
  or ``max_winners`` with the threshold rule);
- the overlay engine (at narrow widths): every sum of its first two groups
  equals the exact sum of the group's products (a shadow of the layer's
  weights), so no accumulator wraps;
- the histogram global k-WTA, with 1-bit radix digits (2 bins, four passes;
  the same generator as the hardware's 8-bit digits);
- the UARTs: the receiver holds a byte until taken whatever the line does;
  bytes sent through transmitter and receiver come out unchanged, in order;
- the host link: a memory write only for a LOAD, an inference only for an
  INFER of the right length, each of a whole frame whose CRC (computed by the
  harness bit by bit) matched and whose length fitted the buffer.

The windows and engines are the units the compiler lowers for a tiny network
(:data:`TINY`), at its own parameters.

Bounded model checking to ``--depth`` cycles (every state the unit reaches
from reset within that many cycles), after a cover run that shows a whole
frame gets through within that depth (the proof is not vacuous). The units
of :data:`INDUCTION` are proven for every depth, by k-induction: their
harnesses add invariants tying the unit's state to the harness's counters
(the FIFO's level is the beats in flight; a combinational unit's output is
at its input's place in the group); for those of :data:`LOCAL_INDUCTION`,
the properties of each beat (held until ready, ``end`` with ``last``) are
proven for every depth and the rest by BMC. Exits 1 when a proof fails, printing
the counterexample trace's path (a VCD).

    python3 scripts/formal.py                     # every unit, depth 16 (or its minimum)
    python3 scripts/formal.py --units fifo,kwta_local --depth 16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from amaranth.hdl import (Assert, Assume, Cat, Const, Cover, Module, Mux, Signal, signed,
                          unsigned)
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from cosparse.compiler import zoo
from cosparse.compiler.folding import Folding, LayerFold
from cosparse.compiler.ir import Overlays
from cosparse.compiler.lower import lower
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.packer import unpack
from cosparse.hw.adapters import Densify, InputOffset, Narrow, StreamFIFO, Widen, ZeroSkip
from cosparse.hw.hostlink import HostLink
from cosparse.hw.kwta import GlobalKWTA, LocalKWTA
from cosparse.hw.loader import LoadPort
from cosparse.hw.logic import LogicEngine
from cosparse.hw.overlay import OverlayEngine
from cosparse.hw.pool import MaxPool, SparseMaxPool
from cosparse.hw.protocol import (CRC16_POLYNOMIAL, LOAD_HEADER_BYTES, SYNC_REQUEST,
                                  Command)
from cosparse.hw.requant import BiasAdd, Requantizer
from cosparse.hw.reshape import DenseFlatten, SparseFlatten
from cosparse.hw.streams import dense_layout
from cosparse.hw.uart import MIN_DIVISOR, UARTRx, UARTTx
from cosparse.sim.formal import StreamHarness, default_engine, prove


def winners_bound(bound: int, groups_by: str = "last"):
    """``extra`` for a sparse-output unit: per output group (``last``, or the frame's
    ``end``), at most ``bound`` entries."""

    def extra(m: Module, dut, h: StreamHarness) -> None:
        o = dut.o
        p = o.payload
        fire = o.valid & o.ready
        count = Signal(unsigned(8))
        total = count + p.count
        m.d.comb += Assert(~o.valid | (total <= bound))
        with m.If(fire):
            m.d.sync += count.eq(total)
            with m.If(getattr(p, groups_by)):
                m.d.sync += count.eq(0)

    return extra


def same_framing(m: Module, dut, h: StreamHarness) -> None:
    """Invariants of a combinational one-to-one unit (for its proof by induction): the
    output is at the input's beat of its group, and no frame is in flight."""
    m.d.comb += [Assert(h.group_beat["o"] == h.group_beat["i"]),
                 Assert(h.in_flight["o_frames"] == 0)]


def fifo_level(m: Module, dut, h: StreamHarness) -> None:
    """The FIFO's invariant (for its proof by induction): the beats in flight are its level."""
    m.d.comb += Assert(h.in_flight["beats"] == dut.fifo.level)


def crc16_byte(crc, byte):
    """CRC-16/CCITT-FALSE of ``crc`` after one more ``byte``, bit by bit (MSB first): the
    specification, written apart from the framer's ``amaranth.lib.crc``."""
    for i in range(8):
        top = crc[15] ^ byte[7 - i]
        shifted = Cat(Const(0, 1), crc[:15])
        crc = Mux(top, shifted ^ CRC16_POLYNOMIAL, shifted)
    return crc


def host_link_harness(in_group_size: int = 2) -> StreamHarness:
    """The host link (framer, load check, executor, responder; a 1-byte-wide 4-word
    loadable memory) with a frame parser of its own on the bytes the link takes: the
    link writes a word only for a LOAD, and starts an inference only for an INFER of the
    right length, whose frame's CRC matched and whose length fitted."""
    port = LoadPort("w", 8, 4, (1, 2, 3, 4))
    link = HostLink(in_width=1, in_groups=1, in_group_size=in_group_size, out_width=1,
                    out_bits=8, out_beats=1, load_ports=[port], design_id=0xC0FFEE,
                    timeout=4096)

    def extra(m: Module, dut, h: StreamHarness) -> None:
        rx = next(p for p in h.streams if p.name == "rx")
        take, b = rx.valid & rx.ready, rx.payload
        state = Signal(range(4))  # sync, header, payload, CRC
        n = Signal(2)
        cmd, length, left = Signal(8), Signal(16), Signal(16)
        crc, crc_lo = Signal(16), Signal(8)
        good = Signal()  # the last whole frame: CRC matched, length fitted
        with m.If(take):
            with m.Switch(state):
                with m.Case(0):
                    with m.If(b == SYNC_REQUEST):
                        m.d.sync += [state.eq(1), n.eq(0), crc.eq(0xFFFF), good.eq(0)]
                with m.Case(1):
                    m.d.sync += [crc.eq(crc16_byte(crc, b)), n.eq(n + 1)]
                    with m.Switch(n):
                        with m.Case(0):
                            m.d.sync += cmd.eq(b)
                        with m.Case(1):
                            m.d.sync += length[:8].eq(b)
                        with m.Case(2):
                            m.d.sync += [length[8:].eq(b), left.eq(Cat(length[:8], b))]
                            m.d.sync += state.eq(Mux(Cat(length[:8], b) == 0, 3, 2))
                with m.Case(2):
                    m.d.sync += [crc.eq(crc16_byte(crc, b)), left.eq(left - 1)]
                    with m.If(left == 1):
                        m.d.sync += [state.eq(3), n.eq(0)]
                with m.Case(3):
                    m.d.sync += n.eq(n + 1)
                    with m.If(n == 0):
                        m.d.sync += crc_lo.eq(b)
                    with m.Else():
                        m.d.sync += [good.eq((crc == Cat(crc_lo, b))
                                             & (length <= link.max_payload)),
                                     state.eq(0)]
        # The core model: its output frame (one beat) comes only after it has taken the
        # input frame's last beat (every output of a network depends on its whole input).
        m.d.comb += Assume(~dut.core_o.valid | (h.frames["core_i"] > h.frames["core_o"]))
        m.d.comb += [
            Assert(~dut.load.en | (good & (cmd == Command.LOAD)
                                   & (length >= LOAD_HEADER_BYTES + port.word_bytes))),
            Assert(~dut.core_i.valid | (good & (cmd == Command.INFER)
                                        & (length == link.in_bytes))),
            Cover(dut.load.en),
            # one inference at a time: a frame goes to the core after the last came back
            Assert(h.frames["core_i"] <= h.frames["core_o"] + 1),
        ]

    return StreamHarness(link, extra=extra, frames_bound=False,
                         framing={"core_o": (1, 1), "core_i": (in_group_size, 1)})


def exact_sums(groups: int = 2):
    """``extra`` for an overlay engine: each sum of the first ``groups`` output groups
    equals the exact sum of its input group's products (a shadow of the layer's
    weights), so no accumulator wraps, for any input values of the engine's width.
    Two groups cover both accumulator banks; later groups take the same paths."""

    def extra(m: Module, dut, h: StreamHarness) -> None:
        M, P = dut.num_kernels, dut.lanes_per_beat
        # The layer's weights, output channels in drain order (the engine's output order).
        dense = unpack(Overlays(dut.weights, dut.kernel_ids, dut.row_start, dut.kernel_map, M))
        wide = signed(dut.acc_bits + 8)
        i, o = dut.i, dut.o
        sums = [[Signal(wide, name=f"sum{g}_{n}") for n in range(M)] for g in range(groups)]
        g_in = Signal(range(groups + 1))  # input groups taken (saturating)
        g_out = Signal(range(groups + 1))
        with m.If(i.valid & i.ready & (g_in < groups)):
            for g in range(groups):
                with m.If(g_in == g):
                    for n in range(M):
                        total = sums[g][n]
                        for j, e in enumerate(i.payload.entries):
                            product = sum((Mux(e.index == k, e.value * int(dense[n, k]), 0)
                                           for k in range(dut.fan_in) if dense[n, k]),
                                          Const(0, wide))
                            total = total + Mux(i.payload.count > j, product, 0)
                        m.d.sync += sums[g][n].eq(total)
            with m.If(i.payload.last):
                m.d.sync += g_in.eq(g_in + 1)
        beat = Signal(range(-(-M // P) + 1))  # output beat within its group
        with m.If(o.valid & o.ready):
            m.d.sync += beat.eq(Mux(o.payload.last, 0, beat + 1))
            with m.If(o.payload.last & (g_out < groups)):
                m.d.sync += g_out.eq(g_out + 1)
        for g in range(groups):
            for t in range(-(-M // P)):
                for lane in range(P):
                    n = t * P + lane
                    if n < M:
                        here = o.valid & (g_out == g) & (beat == t)
                        m.d.comb += Assert(~here | ((g_in > g)
                                                    & (o.payload.data[lane] == sums[g][n])))

    return extra


#: A tiny network whose lowering gives the windows and engines at the compiler's own
#: parameters: a 3x3x1 input, two 2x2 convs of 2 channels (K = 2) with ReLU, a flatten,
#: a global k-WTA (k = 1 of 2) and 2 logits.
TINY = [("conv", 2, (2, 2), 2), ("relu",), ("conv", 2, (2, 2), 2), ("relu",), ("flatten",),
        ("global", 1), ("logits", 2, 1)]


def tiny_stage(layer: str, unit: str, *, logic: bool = False):
    """The ``unit`` of ``layer`` in the tiny network's core (``logic``: the first conv's
    weights as shift-and-add logic)."""
    net = to_drain_order(zoo.random_network((3, 3, 1), TINY, seed=1))
    folds = {"conv0": LayerFold(engine="logic")} if logic else {}
    core = lower(net, Folding(input_width=1, layers=folds))
    return next(s.component for s in core.stages if s.layer == layer and s.unit == unit)


def tiny_digit_engine() -> LogicEngine:
    """The tiny network's first conv in logic, digit-serial: one sum a beat, 3-bit digits."""
    c = tiny_stage("conv0", "LogicEngine", logic=True)
    return LogicEngine(c.weights, lanes_per_beat=1, acc_bits=c.acc_bits, in_range=c.in_range,
                       digit_bits=3)


def uart_rx_harness() -> StreamHarness:
    """The UART receiver with its serial line free (any waveform, glitches included)."""
    h = StreamHarness(UARTRx(MIN_DIVISOR))
    line = Signal(init=1, name="line")
    h.ports.append(line)

    def extra(m: Module, dut, h: StreamHarness) -> None:
        m.d.comb += dut.rx.eq(line)

    h.extra = extra
    return h


class UARTLoop(wiring.Component):
    """The UART transmitter's line into the receiver (its own ``rx_divisor``, default the
    transmitter's): bytes in, bytes out."""

    def __init__(self, divisor: int, rx_divisor: int | None = None):
        self.tx, self.rx = UARTTx(divisor), UARTRx(rx_divisor or divisor)
        super().__init__({"i": In(stream.Signature(unsigned(8))),
                          "o": Out(stream.Signature(unsigned(8)))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx, m.submodules.rx = self.tx, self.rx
        wiring.connect(m, wiring.flipped(self.i), self.tx.i)
        wiring.connect(m, self.rx.o, wiring.flipped(self.o))
        m.d.comb += self.rx.rx.eq(self.tx.tx)
        return m


def uart_loop_harness(rx_divisor: int = MIN_DIVISOR) -> StreamHarness:
    """Bytes through transmitter and receiver come out as they went in, in order, none
    lost (the consumer takes every byte, so the receiver never overruns)."""

    def extra(m: Module, dut, h: StreamHarness) -> None:
        m.d.comb += Assume(h.streams[1].ready)
        sent = [Signal(8, name=f"sent{j}") for j in range(2)]  # byte n in sent[n % 2]
        n_in, n_out = h.beats["i"], h.beats["o"]
        with m.If(dut.i.valid & dut.i.ready):
            with m.If(n_in[0]):
                m.d.sync += sent[1].eq(dut.i.payload)
            with m.Else():
                m.d.sync += sent[0].eq(dut.i.payload)
        m.d.comb += Assert(~dut.o.valid | (dut.o.payload == Mux(n_out[0], sent[1], sent[0])))
        m.d.comb += Cover(n_out == 2)

    return StreamHarness(UARTLoop(MIN_DIVISOR, rx_divisor), one_to_one=True, capacity=2,
                         extra=extra)


def small_engine():
    """The tiny network's first overlay engine (its masks and kernel ids) with 2-bit
    weights and 3-bit input values, accumulators sized by the engine's own bound: narrow
    enough for the solver to check every product (8-bit operands make it too slow)."""
    g = tiny_stage("conv0", "OverlayEngine")
    return OverlayEngine(np.array([[1], [-2], [-1], [1]], np.int8), g.kernel_ids, g.row_start,
                         g.kernel_map, entries=g.entries, value_bits=3, weight_bits=2)


def engine_sums_harness(engine: OverlayEngine) -> StreamHarness:
    """``engine`` (the tiny network's first, as :func:`small_engine`) with
    :func:`exact_sums`, on frames of two groups."""
    return StreamHarness(engine, framing={"i": (None, 2), "o": (2, 2)}, sparse_groups={"i": 4},
                         empty_beats={"i"}, extra=exact_sums())


#: Units proven deeper than ``--depth`` (their first write or frame comes later).
MIN_DEPTH = {"host_link": 20, "sparse_max_pool": 20, "kwta_global_serial": 38,
             "kwta_global": 76, "dense_window": 20, "overlay_engine": 24,
             "overlay_engine_sums": 18, "logic_engine_digits": 26, "uart_rx": 50,
             "uart_loop": 90}

#: Units proven for every depth, by k-induction of this length (their harness's ``extra``
#: holds the invariants that make the properties inductive); the others by BMC.
INDUCTION = {"fifo": 4, "input_offset": 4, "widen": 4, "uart_rx": 4}

#: Units whose beat-local properties (valid and payload held until ready, ``end`` with
#: ``last``; ``StreamHarness(local_only=True)``) are also proven for every depth, by
#: k-induction of this length without invariants; the rest of their contract by BMC.
LOCAL_INDUCTION = {"narrow": 8, "dense_flatten": 8}

#: name -> (harness factory, what it shows)
UNITS = {
    "fifo": (lambda: StreamHarness(StreamFIFO(data.StructLayout({"x": signed(4)}), 2),
                                   one_to_one=True, capacity=2, extra=fifo_level),
             "StreamFIFO depth 2: none lost, at most 2 in flight (beats of 4 bits)"),
    "fifo_frames": (lambda: StreamHarness(StreamFIFO(dense_layout(2, signed(4)), 2),
                                          one_to_one=True, capacity=2),
                    "StreamFIFO depth 2 of dense beats: frames out never ahead of frames in"),
    "input_offset": (lambda: StreamHarness(InputOffset(2, -128), one_to_one=True, capacity=0,
                                           framing={"i": (2, None), "o": (2, None)},
                                           extra=same_framing),
                     "InputOffset: combinational, one beat out per beat in"),
    "bias_add": (lambda: StreamHarness(BiasAdd(3, width=2, acc_bits=6, bias=[1, -2, 3]),
                                       one_to_one=True, capacity=4,
                                       framing={"i": (2, None), "o": (2, None)}),
                 "BiasAdd C=3 D=2: one beat out per beat in, at most 4 in flight"),
    "requantizer": (lambda: StreamHarness(
        Requantizer(2, width=1, acc_bits=6, multiplier=[3, 5], shift=[1, 3]),
        one_to_one=True, capacity=9, framing={"i": (2, None), "o": (2, None)}),
        "Requantizer C=2 D=1 (two shifts, constants ROM): one beat per beat, at most 9 in flight"),
    "narrow": (lambda: StreamHarness(Narrow(4, width_in=2, width_out=1, elem_shape=signed(4)),
                                     framing={"i": (2, None), "o": (4, None)}),
               "Narrow C=4 P=2 Q=1: groups of 4 beats out"),
    "zero_skip": (lambda: StreamHarness(ZeroSkip(4, width=2, entries=2, value_bits=4),
                                        framing={"i": (2, None)}, sparse_groups={"o": 4},
                                        extra=winners_bound(4)),
                  "ZeroSkip C=4 D=2 R=2: sparse entries in order, at most C a group"),
    "densify": (lambda: StreamHarness(Densify(4, entries=2, width=2, value_bits=4),
                                      sparse_groups={"i": 4}, framing={"o": (2, None)}),
                "Densify C=4 R=2 D=2: groups of 2 beats out"),
    "max_pool": (lambda: StreamHarness(MaxPool(2, 2, 1, kernel=(2, 2), stride=(2, 2), width=1,
                                               elem_bits=4),
                                       framing={"i": (1, 4), "o": (1, 1)}),
                 "MaxPool 2x2x1 to 1x1x1: one position a frame out"),
    "dense_flatten": (lambda: StreamHarness(DenseFlatten(2, 2, width=1, value_bits=4),
                                            framing={"i": (2, 2), "o": (4, 1)}),
                      "DenseFlatten 2 positions x 2 channels: one group of 4 a frame"),
    "sparse_flatten": (lambda: StreamHarness(SparseFlatten(2, 2, entries=2, value_bits=4),
                                             sparse_groups={"i": 2, "o": 4},
                                             framing={"i": (None, 2), "o": (None, 1)},
                                             empty_beats={"o"},
                                             extra=winners_bound(4, "end")),
                       "SparseFlatten 2 positions x 2 channels: one group a frame, in order"),
    "kwta_local": (lambda: StreamHarness(LocalKWTA(4, 2, width=2, entries=2),
                                         framing={"i": (2, None)}, sparse_groups={"o": 4},
                                         extra=winners_bound(2)),
                   "LocalKWTA C=4 k=2 (merge, exact k): at most k winners a position"),
    "kwta_local_threshold": (lambda: StreamHarness(
        LocalKWTA(4, 1, width=1, entries=2, boost=[1, 2, 1, 3], max_winners=2),
        framing={"i": (4, None)}, sparse_groups={"o": 4}, extra=winners_bound(2)),
        "LocalKWTA C=4 k=1 B=2 (insertion, boost, threshold rule): at most B winners"),
    "widen": (lambda: StreamHarness(Widen(2, 4, 6), one_to_one=True, capacity=0,
                                    framing={"i": (2, None), "o": (2, None)},
                                    extra=same_framing),
              "Widen: combinational, one beat out per beat in"),
    "sparse_max_pool": (lambda: StreamHarness(
        SparseMaxPool(2, 2, 2, kernel=(2, 2), stride=(2, 2), entries=1, width=1,
                      value_bits=4),
        framing={"i": (None, 4), "o": (None, 1)}, sparse_groups={"i": 2, "o": 2}),
        "SparseMaxPool 2x2x2, 2x2 window: sparse entries in order, one frame out per frame in"),
    "kwta_global_serial": (lambda: StreamHarness(
        GlobalKWTA(2, 1, width=1, entries=1, serial=True, key_shift=0, key_range=(-8, 7)),
        framing={"i": (2, 1), "o": (None, 1)}, sparse_groups={"o": 2},
        extra=winners_bound(1, "end")),
        "SerialGlobalKWTA N=2 k=1 (bit-serial threshold search): at most k winners a frame"),
    "kwta_global": (lambda: StreamHarness(
        GlobalKWTA(2, 1, width=1, entries=1, value_bits=4, key_range=(-8, 7), digit_bits=1),
        framing={"i": (2, 1), "o": (None, 1)}, sparse_groups={"o": 2},
        extra=winners_bound(1, "end")),
        "HistogramGlobalKWTA N=2 k=1, 4-bit keys in 1-bit digits (four radix passes of 2 bins; the "
        "hardware's are 8-bit, 256 bins): at most k winners a frame"),
    "dense_window": (lambda: StreamHarness(
        tiny_stage("conv0", "DenseWindow"), framing={"i": (1, 9), "o": (1, 4)}),
        "DenseWindow 3x3x1, 2x2 kernel: a receptive field a beat, 4 positions a frame"),
    "sparse_window": (lambda: StreamHarness(
        tiny_stage("conv2", "SparseWindow"), framing={"i": (None, 4), "o": (None, 1)},
        sparse_groups={"i": 2, "o": 8}, empty_beats={"o"}),
        "SparseWindow 2x2x2, 2x2 kernel: a receptive field's entries in order, a group a "
        "position"),
    "overlay_engine": (lambda: StreamHarness(
        tiny_stage("conv0", "OverlayEngine"), framing={"i": (None, 4), "o": (2, 4)},
        sparse_groups={"i": 4}, empty_beats={"i"}),
        "OverlayEngine fan-in 4, M=2, K=2: M sums a group in 2 beats, a group per input "
        "group"),
    "overlay_engine_sums": (lambda: engine_sums_harness(small_engine()),
        "OverlayEngine as above with 2-bit weights and 3-bit values, frames of 2 groups: "
        "each sum of the first two groups (both accumulator banks) the exact one, so no "
        "accumulator wraps"),
    "logic_engine": (lambda: StreamHarness(
        tiny_stage("conv0", "LogicEngine", logic=True), one_to_one=True,
        framing={"i": (1, 4), "o": (1, 4)}),
        "LogicEngine fan-in 4, M=2: a beat of M sums per receptive field"),
    "logic_engine_digits": (lambda: StreamHarness(
        tiny_digit_engine(), framing={"i": (1, 4), "o": (2, 4)}),
        "LogicEngine as above, digit-serial (3-bit digits: 3 cycles a field), a sum a beat"),
    "uart_rx": (uart_rx_harness,
                "UARTRx, 4 cycles a bit, any line waveform: a byte held until taken (an "
                "overrun drops the new byte)"),
    "uart_loop": (uart_loop_harness,
                  "UARTTx into UARTRx, 4 cycles a bit: each byte out is the byte in, in order, "
                  "two bytes through"),
    "host_link": (host_link_harness,
                  "HostLink: a memory write only for a LOAD, an inference only for an INFER "
                  "of the right length, each of a whole frame whose CRC matched and length "
                  "fitted (its own parser and bitwise CRC); one inference at a time"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", default="all",
                    help=f"comma-separated units (default all): {', '.join(UNITS)}")
    ap.add_argument("--depth", type=int, default=16, help="BMC depth in cycles (default 16)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the proofs here (default: a temporary folder; a failed proof's "
                         "trace is copied next to --json or into the current folder)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    names = list(UNITS) if args.units == "all" else args.units.split(",")
    unknown = [n for n in names if n not in UNITS]
    if unknown:
        ap.error(f"unknown unit(s) {', '.join(unknown)}; the units are {', '.join(UNITS)}")
    if args.depth < 2:
        ap.error(f"--depth must be at least 2, got {args.depth}")
    results, failed = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cosparse-formal-") as tmp:
        work = args.workdir or Path(tmp)
        keep = args.workdir or (args.json.parent if args.json else Path.cwd())
        for i, name in enumerate(names):
            make, what = UNITS[name]
            depth = max(args.depth, MIN_DEPTH.get(name, 0))
            mode = "prove" if name in INDUCTION else "bmc"
            how = (f"k-induction, k = {INDUCTION[name]}" if mode == "prove"
                   else f"BMC depth {depth}")
            print(f"[{i + 1}/{len(names)}] {name}: {what} ({how}) ...", flush=True)
            # Not vacuous: a whole frame (or beat) gets through within the depth.
            c = prove(f"{name}_cover", make(), work, mode="cover", depth=depth)
            r = prove(name, make(), work, mode=mode,
                      depth=INDUCTION[name] if mode == "prove" else depth)
            seconds = r.seconds + c.seconds
            if r.passed and name in LOCAL_INDUCTION:
                local = make()
                local.local_only = True
                loc = prove(f"{name}_local", local, work, mode="prove",
                            depth=LOCAL_INDUCTION[name])
                seconds += loc.seconds
                if not loc.passed:
                    r = loc  # its trace and log say what failed
            first = min(c.cover_steps) if c.cover_steps else None
            row = {"unit": name, "property": what, "passed": r.passed and c.passed,
                   "mode": "induction" if mode == "prove" else
                   "bmc, beat-local properties by induction" if name in LOCAL_INDUCTION
                   else "bmc",
                   "depth": None if mode == "prove" else depth, "first_output_step": first,
                   "seconds": round(seconds, 1)}
            if not c.passed:
                r = c  # its trace (if any) and log say why no frame got through
            if row["passed"]:
                every = (" for every depth" if mode == "prove" else
                         " (held beats and end marks for every depth)"
                         if name in LOCAL_INDUCTION else "")
                print(f"    proven{every} in {row['seconds']:.1f} s (first frame out at step "
                      f"{first})", flush=True)
            else:
                failed.append(name)
                trace = None
                if r.trace is not None and args.workdir is None:
                    trace = keep / f"formal_{name}_{r.trace.name}"
                    trace.write_bytes(r.trace.read_bytes())
                elif r.trace is not None:
                    trace = r.trace
                row["trace"] = None if trace is None else str(trace)
                print(f"    FAILED: counterexample trace {trace}\n{r.log_tail}", flush=True)
            results.append(row)
    summary = {"depth": args.depth, "engine": default_engine(), "units": results,
               "failed": failed, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    deeper = sorted({r["depth"] for r in results if r["depth"]} - {args.depth})
    inductive = sum(r["mode"] == "induction" for r in results)
    print(f"{len(names) - len(failed)} of {len(names)} units proven to depth {args.depth}"
          + (f" (some to {', '.join(map(str, deeper))})" if deeper else "")
          + (f", {inductive} of them for every depth (induction)" if inductive else "")
          + f" in {summary['seconds']:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
