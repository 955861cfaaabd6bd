"""Rescaler: a layer's second rounding, per-channel affine of int8/int9 values.

The rule is the golden model's (:func:`cosparse.sim.golden.rescale`)::

    y = clamp(round_half_even((x * multiplier[c] + offset[c]) / 2**shift[c]), lo, hi)

A quantized model that rounds a layer's output, applies a per-channel affine
(a BatchNormalization or bias Add it did not fold) and rounds again needs
this stage after the layer's requantizer. The multipliers are signed 25-bit
(24 bits of magnitude: the affine's factor to about 6e-8), split over two
products of one DSP block each: the low ``dsp_width - 1`` bits unsigned and
the rest signed. The shift is a constant part ``base = min(shift) - 1`` and a
variable part over the spread of the shifts, as in the requantizer.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Value, signed, unsigned
from amaranth.lib import data

from .channels import ChannelConstantsUnit, LaneStages
from .requant import _int_vector, _sbits, round_saturate
from .util import check_int, registered_product, skid_output, typed_payload
from .util import value_bits as _value_bits

__all__ = ["Rescaler", "MAX_RESCALE_MULTIPLIER", "MAX_OFFSET_BITS"]

MAX_RESCALE_MULTIPLIER = (1 << 24) - 1
#: ``|offset| < 2**MAX_OFFSET_BITS``.
MAX_OFFSET_BITS = 46


class Rescaler(ChannelConstantsUnit):
    """Dense stream of int8/int9 values to a dense stream on a second scale.

    Element ``lane`` of beat ``b`` of a group is channel ``c = b * D + lane``;
    padding lanes of a group's last beat come out as 0; ``last`` and ``end``
    pass through. One beat per cycle, no bubbles; the pipeline (S0 input and
    constants, S1 operand and S2 product registers in the DSP blocks, S3 sum,
    S4 shift, then the skid output) advances on one registered enable, so
    ``i.ready`` does not depend combinationally on ``o.ready``. The constants
    come from a ROM of one word per beat of a group, read one cycle ahead
    (wired in for one beat per group).

    Parameters
    ----------
    channels : int
        ``C``, elements per group.
    width : int
        ``D``, elements per beat.
    value_bits : int
        Signed width of the input values (8, or 9 for int9).
    multiplier : sequence of int
        ``C`` nonzero multipliers, ``|m| <= 2**24 - 1``.
    shift : sequence of int
        ``C`` right shifts, 0 to 62.
    offset : sequence of int
        ``C`` offsets, ``|offset| < 2**46``.
    relu : bool
        Clamp at 0 (a fused ReLU).
    lo, hi : int, optional
        The output range (default -128, or 0 with ``relu``, and 127).
    loadable : bool
        Constants in a memory the host loader writes (:attr:`load_port`).
    dsp_width : int
        Signed input width of the part's multipliers (16 iCE40, 18 ECP5).

    Members
    -------
    i : In(stream.Signature(dense_layout(D, signed(value_bits))))
    o : Out(stream.Signature(dense_layout(D, signed(out_bits))))

    Raises
    ------
    ValueError
        A parameter is out of its range or a constant vector does not have
        ``C`` entries.
    """

    def __init__(self, channels: int, *, width: int = 8, value_bits: int = 8, multiplier,
                 shift, offset, relu: bool = False, lo: int | None = None,
                 hi: int | None = None, loadable: bool = False, dsp_width: int = 18):
        check_int("channels", channels, 1)
        check_int("width (D)", width, 1, 256)
        self.value_bits = check_int("value_bits", value_bits, 2, 9)
        if not isinstance(relu, bool):
            raise ValueError(f"relu must be True or False, got {relu!r}")
        if dsp_width not in (16, 18):
            raise ValueError(f"dsp_width must be 16 (iCE40) or 18 (ECP5), got {dsp_width!r}")
        self.channels, self.width, self.relu = channels, width, relu
        self.lo = (0 if relu else -128) if lo is None else (
            max(check_int("lo", lo, -255, 0), 0) if relu else check_int("lo", lo, -255, 0))
        self.hi = check_int("hi", hi, 0, 255) if hi is not None else 127
        if self.hi - self.lo > 255:
            raise ValueError(f"the output range {self.lo}..{self.hi} has more than 256 values")
        #: Signed bits of an output: 8, or 9 for a range beyond int8's.
        self.out_bits = max(8, _value_bits(self.lo, self.hi))
        top = MAX_RESCALE_MULTIPLIER
        self.multiplier = _int_vector("multiplier", multiplier, channels, -top, top)
        if 0 in self.multiplier:
            raise ValueError("multiplier values must be nonzero")
        self.shift = _int_vector("shift", shift, channels, 0, 62)
        big = 1 << MAX_OFFSET_BITS
        self.offset = _int_vector("offset", offset, channels, -big + 1, big - 1)
        #: Unsigned low part of a multiplier (one DSP input); the rest is signed.
        self.lo_split = dsp_width - 1
        self.compact = False
        self._init_signature(self.value_bits, loadable)

    @property
    def dsps(self) -> int:
        """DSP multipliers: two per lane (the multiplier's low and high parts)."""
        return 2 * self.width

    @property
    def latency(self) -> int:
        """Cycles from an accepted input beat to its output beat."""
        return 6

    def _hi_bits(self) -> int:
        return max(2, _sbits(min(self.multiplier) >> self.lo_split,
                             max(self.multiplier) >> self.lo_split))

    def _offset_bits(self) -> int:
        return _sbits(min(self.offset), max(self.offset))

    @property
    def consts_layout(self) -> data.ArrayLayout:
        """One word of the constants memory: per lane the multiplier's parts, the offset,
        the variable shift ``t`` and the round flag."""
        lane = data.StructLayout({"m_lo": unsigned(self.lo_split),
                                  "m_hi": signed(self._hi_bits()),
                                  "off": signed(self._offset_bits()),
                                  "t": unsigned(self.shift_bits), "rnd": unsigned(1)})
        return data.ArrayLayout(lane, self.width)

    def _lane_constants(self, b: int, d: int) -> dict:
        c = b * self.width + d
        if c >= self.channels:
            return {"m_lo": 0, "m_hi": 0, "off": 0, "t": 0, "rnd": 0}
        mult, s = self.multiplier[c], self.shift[c]
        return {"m_lo": mult & ((1 << self.lo_split) - 1), "m_hi": mult >> self.lo_split,
                "off": self.offset[c], "t": max(s - 1, 0) - self.shift_base, "rnd": int(s > 0)}

    def elaborate(self, platform):
        m = Module()
        D, ls = self.width, self.lo_split
        tb, base = self.shift_bits, self.shift_base
        vb = self.value_bits
        hb = self._hi_bits()
        # x * m + offset: the products' and the offset's widths, plus a carry
        sb = max(vb + ls + 1, vb + hb + ls, self._offset_bits()) + 1
        qb = max(sb - base, self.out_bits + 3)

        adv, take, consts = self._input(m)
        p = self.i.payload
        lanes = LaneStages(m, D)
        stage, advance = lanes.stage, lanes.advance

        off = signed(self._offset_bits())
        s0 = stage("s0", x=signed(vb))
        with m.If(adv):
            m.d.sync += [s0["valid"].eq(take), s0["last"].eq(p.last), s0["end"].eq(p.end)]
            m.d.sync += [s0["x"][d].eq(p.data[d]) for d in range(D)]
        # S1 operands and S2 products in the DSP blocks; the other constants alongside
        s1 = stage("s1", off=off, sh=tb, rnd=1)
        s2 = stage("s2", off=off, sh=tb, rnd=1)
        p_lo = [registered_product(m, f"s2_lo{d}", s0["x"][d], consts[d].m_lo, platform, en=adv)
                for d in range(D)]
        p_hi = [registered_product(m, f"s2_hi{d}", s0["x"][d], consts[d].m_hi, platform, en=adv)
                for d in range(D)]
        s3 = stage("s3", sum=signed(sb), sh=tb, rnd=1)
        s4 = stage("s4", q=signed(qb), rnd=1, sticky=1)

        def dropped(v, amount) -> Value:
            """Whether ``v >> amount`` (a variable amount) drops a 1."""
            return (v.as_unsigned() & ((Const(1, qb + 1) << amount) - 1)[:qb]) != 0

        with m.If(adv):
            advance(s1, s0, off=lambda d: consts[d].off, sh=lambda d: consts[d].t,
                    rnd=lambda d: consts[d].rnd)
            advance(s2, s1, off=lambda d: s1["off"][d], sh=lambda d: s1["sh"][d],
                    rnd=lambda d: s1["rnd"][d])
            advance(s3, s2, sum=lambda d: (p_hi[d] << ls) + p_lo[d] + s2["off"][d],
                    sh=lambda d: s2["sh"][d], rnd=lambda d: s2["rnd"][d])
            q3 = [s3["sum"][d] >> base for d in range(D)]
            advance(s4, s3, q=lambda d: q3[d] >> s3["sh"][d] if tb else q3[d],
                    rnd=lambda d: s3["rnd"][d],
                    sticky=lambda d: ((s3["sum"][d][:base] != 0) if base else 0)
                    | (dropped(q3[d], s3["sh"][d]) if tb else 0))

        ys = [round_saturate(m, f"s5_{d}", s4["q"][d], s4["rnd"][d], s4["sticky"][d], qb,
                             self.lo, self.hi, self.out_bits) for d in range(D)]
        adv_ = skid_output(m, self.o, s4["valid"],
                           typed_payload(m, self.o, data=ys, last=s4["last"], end=s4["end"]))
        m.d.comb += adv.eq(adv_)
        return m
