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


def _sum_bits(weights: np.ndarray, in_range: tuple[int, int]) -> int:
    """Signed bits of the widest kernel sum ``W x`` over inputs in ``in_range``."""
    lo, hi = in_range
    low = np.minimum(weights * lo, weights * hi).sum(axis=1)
    high = np.maximum(weights * lo, weights * hi).sum(axis=1)
    return max(max(int(a).bit_length(), int(b).bit_length()) + 1 for a, b in zip(low, high))


class LogicEngine(wiring.Component):
    """``y = W x`` for fixed weights: no multiplier, no weight memory.

    Every input beat is a whole fan-in vector (a receptive field from
    :class:`~cosparse.hw.dense_window.DenseWindow`); the products are the
    shift-and-add plan of :class:`~cosparse.hw.logic.graph.AdderGraph`
    (products shared by every kernel that reads an input, then one adder
    tree per kernel), with a register after every adder. All ``M`` sums of
    a beat leave as one group of ``ceil(M / P)`` beats of ``P`` sums, in
    kernel order.

    **Digit-serial.** Where a field may take several cycles (``P < M``), the
    plan can run on digits of the inputs instead of whole values: each value
    enters as ``D`` digits of ``digit_bits``, most significant (signed)
    first, one per cycle, and each kernel's sum is accumulated Horner-wise
    (``acc << digit_bits`` plus the digit's sum) at the root. Every adder of
    the plan is then as wide as a digit's products need, not a value's, for
    one accumulator per kernel.

    Throughput: one input beat every ``max(D, ceil(M / P))`` cycles
    (:attr:`cycles_per_field`; ``P = M`` and whole values: one per cycle),
    no bubbles. Latency: ``depth + 5`` cycles from an input beat's transfer
    (its last digit's cycle) to its group's first output beat (input
    register, ``depth`` adder stages, the sums' register, the output FIFO,
    the output register).

    The pipeline never stalls, so its registers have no enable (an enable
    on every stage would be one net to every flip-flop): a field enters only
    while the output FIFO has room for it and for every field in flight
    (:attr:`fifo_depth` fields), and ``i.ready`` is a comparison of that
    count (digit-serial: of the digit counter), so no path runs from
    ``o.ready`` to ``i.ready``.

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
    digit_bits : int, optional
        Bits per input digit: the input width for whole values. Default: of
        the digit sizes whose ``D`` fits in ``ceil(M / P)`` cycles, the one
        with the fewest LUTs (:meth:`lut_estimate`).

    Attributes
    ----------
    graph : AdderGraph
        The plan (over a digit's range when digit-serial).
    weights : array of int64, shape (M, fan_in)
    in_range : (int, int)
    num_kernels, fan_in, lanes_per_beat, acc_bits, beats_per_group, latency, fifo_depth : int
    value_bits, digit_bits, digits, cycles_per_field : int

    Members
    -------
    i : In(stream.Signature(dense_layout(fan_in)))
        One fan-in vector per beat; ``end`` on a frame's last.
    o : Out(stream.Signature(dense_layout(P, signed(acc_bits))))
        The ``M`` sums of each input beat; ``last`` on a group's final beat,
        ``end`` on the frame's.
    """

    def __init__(self, weights: np.ndarray, *, lanes_per_beat: int | None = None,
                 acc_bits: int | None = None, in_range: tuple[int, int] = (-128, 127),
                 digit_bits: int | None = None):
        w = np.asarray(weights)
        if w.ndim != 2 or not np.issubdtype(w.dtype, np.integer) or w.size == 0:
            raise ValueError(f"weights must be a non-empty [M, fan_in] integer array, got "
                             f"shape {getattr(w, 'shape', None)}")
        if w.min() < -128 or w.max() > 127:
            raise ValueError(f"weights must be int8 values, got {int(w.min())} .. {int(w.max())}")
        self.num_kernels, self.fan_in = w.shape
        self.lanes_per_beat = check_int("lanes_per_beat", lanes_per_beat or self.num_kernels,
                                        1, self.num_kernels)
        self.beats_per_group = -(-self.num_kernels // self.lanes_per_beat)
        #: Signed bits of an input value (8, or 9 for an int9 range).
        self.value_bits = max(8, value_bits(*in_range))
        self.weights = w.astype(np.int64)
        self.in_range = in_range
        need = max(_sum_bits(self.weights, in_range), 2)
        self.acc_bits = check_int("acc_bits", acc_bits or need, need, 64)
        if digit_bits is None:
            digit_bits = min(self._digit_choices(), key=lambda b: (self._estimate(b), -b))
        self._use_digits(check_int("digit_bits", digit_bits, 1, self.value_bits))
        #: Fields the output FIFO holds: enough for those in flight at full rate.
        self.fifo_depth = -(-(self.graph.depth + self.digits + 5) // self.cycles_per_field) + 2
        self.latency = self.graph.depth + 5
        self.in_layout = dense_layout(self.fan_in, signed(self.value_bits))
        self.out_layout = dense_layout(self.lanes_per_beat, signed(self.acc_bits))
        super().__init__({"i": In(stream.Signature(self.in_layout)),
                          "o": Out(stream.Signature(self.out_layout))})

    def _digit_choices(self) -> list[int]:
        """Digit sizes whose digits fit in a group's beats (whole values always)."""
        vb = self.value_bits
        return sorted({-(-vb // n) for n in range(1, min(self.beats_per_group, vb) + 1)})

    def _use_digits(self, digit_bits: int) -> None:
        vb = self.value_bits
        self.digit_bits = digit_bits
        self.digits = -(-vb // digit_bits)
        self.cycles_per_field = max(self.digits, self.beats_per_group)
        if self.digits == 1:
            rng = self.in_range
        else:  # the top digit signed, the others unsigned
            top = vb - digit_bits * (self.digits - 1)
            rng = (-(1 << (top - 1)), (1 << digit_bits) - 1)
        self.graph = _plan(self.weights.tobytes(), self.weights.shape, rng)
        #: Signed bits of the plan's inputs (a digit, or a whole value).
        self.tap_bits = self.value_bits if self.digits == 1 else digit_bits + 1

    def _estimate(self, digit_bits: int) -> int:
        self._use_digits(digit_bits)
        return self.lut_estimate()

    def lut_estimate(self, family: str = "ecp5") -> int:
        """LUTs: the plan's adders, the accumulators (digit-serial), the output FIFO
        and beat multiplexer.

        On ECP5 one LUT per sum bit (yosys's count of the gsc-cs conv1 engine is
        within 1%); iCE40 takes :data:`ICE40_LUT_FACTOR` as many (its carry
        chains leave some sum bits to a LUT of their own).
        """
        mux = self.lanes_per_beat * self.acc_bits * (self.beats_per_group - 1)
        fifo = (self.num_kernels * self.acc_bits) // 2  # LUT RAM, 4 bits x 16 words per 2 LUTs
        luts = self.graph.lut_estimate() + mux + fifo
        if self.digits > 1:
            # an accumulator's adder per kernel (yosys folds the first digit's select
            # into its LUTs), the digit multiplexers of the inputs
            luts += self.acc_bits * self.num_kernels + self.fan_in * self.tap_bits
        return round(luts * ICE40_LUT_FACTOR) if family == "ice40" else luts

    def elaborate(self, platform):
        m = Module()
        g = self.graph
        p, s = self.lanes_per_beat, self.beats_per_group
        n, db = self.digits, self.digit_bits
        depth = g.depth

        # Credits: a field enters only when the output FIFO has room for it and for
        # every field still in the pipeline, so the pipeline never stalls and its
        # registers need no enable (one enable would fan out to every flip-flop).
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=s * p * self.acc_bits + 1,
                                                    depth=self.fifo_depth)
        held = Signal(range(self.fifo_depth + 1))  # fields in the pipeline or the FIFO
        feed = Signal()  # a digit (or whole value) of each input enters the pipeline
        start = Signal()
        pop = Signal()
        digit = Signal(range(max(n, 2)))  # 0: the most significant
        if n == 1:
            m.d.comb += [self.i.ready.eq(held < self.fifo_depth),
                         feed.eq(self.i.valid & self.i.ready), start.eq(feed)]
        else:
            # The beat is held while its digits enter (valid stays up until ready), so
            # ready is the last digit's cycle alone.
            m.d.comb += [feed.eq(self.i.valid & ((digit != 0) | (held < self.fifo_depth))),
                         start.eq(feed & (digit == 0)), self.i.ready.eq(digit == n - 1)]
            with m.If(feed):
                m.d.sync += digit.eq(Mux(digit == n - 1, 0, digit + 1))
        m.d.sync += held.eq(held + start - pop)

        def marks(name: str, first):
            sig = [Signal(name=f"{name}_{k}", reset_less=name != "valid") for k in range(depth + 2)]
            m.d.sync += sig[0].eq(first)
            m.d.sync += [sig[k].eq(sig[k - 1]) for k in range(1, depth + 2)]
            return sig

        valid = marks("valid", feed)
        end = marks("end", self.i.payload.end)
        top = marks("top", digit == 0)  # a field's first digit: the accumulators restart
        low = marks("low", digit == n - 1)  # its last: the sums are whole

        # Stage 0: the input vector (or a digit of each value); then one register per
        # adder, and delay registers where a later stage reads an earlier value.
        regs: dict[tuple[int, int], Signal] = {}
        for t in range(self.fan_in):
            r = Signal(signed(self.tap_bits), name=f"x_{t}", reset_less=True)
            m.d.sync += r.eq(self._digit(self.i.payload.data[t], digit))
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
            nd = g.nodes[k]
            a = at(nd.a, nd.level - 1).as_signed() << nd.ia
            b = at(nd.b, nd.level - 1).as_signed() << nd.ib
            total = (a + b) if nd.sb > 0 else (a - b)
            r = Signal(signed(nd.bits), name=f"n{k}", reset_less=True)
            m.d.sync += r.eq(total >> nd.shr if nd.shr else total)
            regs[(k, nd.level)] = r

        # The sums, each with its sign and shift, in one register stage (digit-serial:
        # accumulated, the earlier digits' sum shifted up by a digit), into the FIFO.
        sums = [Signal(signed(self.acc_bits), name=f"sum_{j}", reset_less=True)
                for j in range(s * p)]
        for j, root in enumerate(g.roots):
            if root.node < 0:
                continue  # no weight: always 0
            v = at(root.node, depth).as_signed() << root.shift
            v = -v if root.sign < 0 else v
            m.d.sync += sums[j].eq(v if n == 1 else Mux(top[depth], 0, sums[j] << db) + v)
        m.d.comb += [fifo.w_en.eq(valid[depth + 1] & low[depth + 1]),
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

    def _digit(self, x, digit: Signal):
        """Input value ``x`` whole, or its digit number ``digit`` (0: the top, signed)."""
        n, db = self.digits, self.digit_bits
        if n == 1:
            return x
        value = x[db * (n - 1):].as_signed()
        for d in range(1, n):
            lo = db * (n - 1 - d)
            value = Mux(digit == d, x[lo:lo + db], value)
        return value
