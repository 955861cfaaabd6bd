"""The weights-in-logic engine: a fixed-weight layer as pipelined shift-and-add logic."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..streams import dense_layout
from ..util import check_int, skid_output, typed_payload, value_bits
from .graph import AdderGraph

__all__ = ["LogicEngine", "ICE40_LUT_FACTOR"]

#: yosys's iCE40 LUTs over the ECP5 count of the same engine (measured: 6,394 / 5,331
#: on the reduced gsc-cs conv1).
ICE40_LUT_FACTOR = 1.2


@lru_cache(maxsize=16)
def _plan(weights: bytes, shape: tuple[int, int], in_range: tuple[int, int]) -> AdderGraph:
    """The plan of a weight matrix, made once: the fold lowers the same layer at every
    step (an AdderGraph is not changed after it is made)."""
    return AdderGraph(np.frombuffer(weights, dtype=np.int64).reshape(shape), in_range)


class LogicEngine(wiring.Component):
    """``y = W x`` for fixed weights: no multiplier, no weight memory.

    Every input beat is a whole fan-in vector (a receptive field from
    :class:`~cosparse.hw.dense_window.DenseWindow`); the products are the
    shift-and-add plan of :class:`~cosparse.hw.logic.graph.AdderGraph`
    (products shared by every kernel that reads an input, then one adder
    tree per kernel), with a register after every adder. All ``M`` sums of
    a beat leave as one group of ``ceil(M / P)`` beats of ``P`` sums, in
    kernel order.

    Throughput: one input beat every ``ceil(M / P)`` cycles (``P = M``: one
    per cycle), no bubbles. Latency: ``depth + 5`` cycles from an input beat
    to its group's first output beat (input register, ``depth`` adder
    stages, the sums' register, the output FIFO, the output register).

    The pipeline never stalls, so its registers have no enable (an enable
    on every stage would be one net to every flip-flop): a field enters only
    while the output FIFO has room for it and for every field in flight
    (:attr:`fifo_depth` fields), and ``i.ready`` is a comparison of that
    count, so no path runs from ``o.ready`` to ``i.ready``.

    Parameters
    ----------
    weights : array of int, shape (M, fan_in)
        The weights, kernel ``m`` in row ``m`` (int8 values).
    lanes_per_beat : int, optional
        ``P``: sums per output beat (default ``M``).
    acc_bits : int, optional
        Output element width (default: the width the largest sum needs).
    in_range : (int, int)
        The inputs' value range (default int8's).

    Attributes
    ----------
    graph : AdderGraph
        The plan.
    num_kernels, fan_in, lanes_per_beat, acc_bits, beats_per_group, latency, fifo_depth : int

    Members
    -------
    i : In(stream.Signature(dense_layout(fan_in)))
        One fan-in vector per beat; ``end`` on a frame's last.
    o : Out(stream.Signature(dense_layout(P, signed(acc_bits))))
        The ``M`` sums of each input beat; ``last`` on a group's final beat,
        ``end`` on the frame's.
    """

    def __init__(self, weights: np.ndarray, *, lanes_per_beat: int | None = None,
                 acc_bits: int | None = None, in_range: tuple[int, int] = (-128, 127)):
        w = np.asarray(weights)
        if w.ndim != 2 or not np.issubdtype(w.dtype, np.integer) or w.size == 0:
            raise ValueError(f"weights must be a non-empty [M, fan_in] integer array, got "
                             f"shape {getattr(w, 'shape', None)}")
        if w.min() < -128 or w.max() > 127:
            raise ValueError(f"weights must be int8 values, got {int(w.min())} .. {int(w.max())}")
        self.graph = _plan(w.astype(np.int64).tobytes(), w.shape, in_range)
        self.num_kernels, self.fan_in = w.shape
        self.lanes_per_beat = check_int("lanes_per_beat", lanes_per_beat or self.num_kernels,
                                        1, self.num_kernels)
        need = max([self._root_bits(r) for r in self.graph.roots] + [2])
        self.acc_bits = check_int("acc_bits", acc_bits or need, need, 64)
        self.beats_per_group = -(-self.num_kernels // self.lanes_per_beat)
        #: Fields the output FIFO holds: enough for those in flight at full rate.
        self.fifo_depth = -(-(self.graph.depth + 6) // self.beats_per_group) + 2
        self.latency = self.graph.depth + 5
        #: Signed bits of an input value (8, or 9 for an int9 range).
        self.value_bits = max(8, value_bits(*in_range))
        self.in_layout = dense_layout(self.fan_in, signed(self.value_bits))
        self.out_layout = dense_layout(self.lanes_per_beat, signed(self.acc_bits))
        super().__init__({"i": In(stream.Signature(self.in_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    def _root_bits(self, root) -> int:
        if root.node < 0:
            return 1
        n = self.graph.nodes[root.node]
        lo, hi = (n.lo << root.shift, n.hi << root.shift)
        if root.sign < 0:
            lo, hi = -hi, -lo
        return max(int(lo).bit_length(), int(hi).bit_length()) + 1

    def lut_estimate(self, family: str = "ecp5") -> int:
        """LUTs: the plan's adders, the output FIFO and beat multiplexer.

        On ECP5 one LUT per sum bit (yosys's count of the gsc-cs conv1 engine is
        within 1%); iCE40 takes :data:`ICE40_LUT_FACTOR` as many (its carry
        chains leave some sum bits to a LUT of their own).
        """
        mux = self.lanes_per_beat * self.acc_bits * (self.beats_per_group - 1)
        fifo = (self.num_kernels * self.acc_bits) // 2  # LUT RAM, 4 bits x 16 words per 2 LUTs
        luts = self.graph.lut_estimate() + mux + fifo
        return round(luts * ICE40_LUT_FACTOR) if family == "ice40" else luts

    def elaborate(self, platform):
        m = Module()
        g = self.graph
        p, s = self.lanes_per_beat, self.beats_per_group
        depth = g.depth

        # Credits: a field enters only when the output FIFO has room for it and for
        # every field still in the pipeline, so the pipeline never stalls and its
        # registers need no enable (one enable would fan out to every flip-flop).
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=s * p * self.acc_bits + 1,
                                                    depth=self.fifo_depth)
        held = Signal(range(self.fifo_depth + 1))  # fields in the pipeline or the FIFO
        take = Signal()
        pop = Signal()
        m.d.comb += [self.i.ready.eq(held < self.fifo_depth), take.eq(self.i.valid & self.i.ready)]
        m.d.sync += held.eq(held + take - pop)

        valid = [Signal(name=f"valid_{k}") for k in range(depth + 2)]
        end = [Signal(name=f"end_{k}", reset_less=True) for k in range(depth + 2)]
        m.d.sync += [valid[0].eq(take), end[0].eq(self.i.payload.end)]
        m.d.sync += [valid[k].eq(valid[k - 1]) for k in range(1, depth + 2)]
        m.d.sync += [end[k].eq(end[k - 1]) for k in range(1, depth + 2)]

        # Stage 0: the input vector; then one register per adder, and delay registers
        # where a later stage reads an earlier value.
        regs: dict[tuple[int, int], Signal] = {}
        for t in range(self.fan_in):
            r = Signal(signed(self.value_bits), name=f"x_{t}", reset_less=True)
            m.d.sync += r.eq(self.i.payload.data[t])
            regs[(t, 0)] = r

        def at(node: int, level: int) -> Signal:
            key = (node, level)
            if key not in regs:
                prev = at(node, level - 1)
                r = Signal(prev.shape(), name=f"n{node}_d{level}", reset_less=True)
                m.d.sync += r.eq(prev)
                regs[key] = r
            return regs[key]

        for k in range(self.fan_in, len(g.nodes)):
            n = g.nodes[k]
            a = at(n.a, n.level - 1).as_signed() << n.ia
            b = at(n.b, n.level - 1).as_signed() << n.ib
            total = (a + b) if n.sb > 0 else (a - b)
            r = Signal(signed(n.bits), name=f"n{k}", reset_less=True)
            m.d.sync += r.eq(total >> n.shr if n.shr else total)
            regs[(k, n.level)] = r

        # The sums, each with its sign and shift, in one register stage, into the FIFO.
        sums = [Signal(signed(self.acc_bits), name=f"sum_{j}", reset_less=True)
                for j in range(s * p)]
        for j, root in enumerate(g.roots):
            if root.node < 0:
                continue  # no weight: always 0
            v = at(root.node, depth).as_signed() << root.shift
            m.d.sync += sums[j].eq(-v if root.sign < 0 else v)
        m.d.comb += [fifo.w_en.eq(valid[depth + 1]),
                     fifo.w_data.eq(Cat(*sums, end[depth + 1]))]

        # Output: each field's beats, P sums each, through the skid register.
        beat = Signal(range(max(s, 2)))
        final = beat == s - 1
        width = self.acc_bits
        lanes = [Signal(signed(width), name=f"lane_{q}") for q in range(p)]
        for q in range(p):
            value = fifo.r_data[q * width:(q + 1) * width]
            for b in range(1, s):
                lo = (b * p + q) * width
                value = Mux(beat == b, fifo.r_data[lo:lo + width], value)
            m.d.comb += lanes[q].eq(value)
        payload = typed_payload(m, self.o, data=lanes, last=final,
                                end=fifo.r_data[-1] & final)
        adv = skid_output(m, self.o, fifo.r_rdy, payload)
        with m.If(adv & fifo.r_rdy):
            m.d.sync += beat.eq(Mux(final, 0, beat + 1))
        m.d.comb += [pop.eq(adv & fifo.r_rdy & final), fifo.r_en.eq(pop)]
        return m
