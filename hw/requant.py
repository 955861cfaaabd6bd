"""Requantizer: per-channel fixed-point scaling of accumulators to int8.

The rule is the golden model's (:func:`cosparse.sim.golden.requantize`)::

    y = clamp(((acc + bias[c]) * multiplier[c] + round[c]) >> shift[c], lo, 127)

with ``round[c] = 1 << (shift[c] - 1)`` (0 when ``shift[c] == 0``: rounding
half towards +infinity), ``>>`` an arithmetic shift, ``lo`` 0 with a fused
ReLU and -128 without.

The rounding is done after the shift instead of before it, which needs no
wide adder::

    (p + (1 << (s - 1))) >> s  ==  ((p >> (s - 1)) + 1) >> 1      (s >= 1)

and saturation compares ``q = p >> (s - 1)`` with constants (``q >= 255``
means ``y >= 128``, ``q <= -258`` means ``y <= -129``, ``q <= -2`` means
``y < 0``), in parallel with the 10-bit rounding add.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .channels import ChannelConstantsUnit, LaneStages
from .util import (check_int, lut_mul, registered_product, skid_output, typed_payload,
                   value_bits)
from .streams import dense_layout

__all__ = ["Requantizer", "BiasAdd", "MAX_MULTIPLIER", "MAX_SHIFT", "MAX_ACC_BITS", "sum_bits",
           "dsps_per_lane"]

#: Multipliers of up to 24 bits: a model that arrives quantized needs them to round as
#: its float scale does (16 bits change about 0.02% of its values).
MAX_MULTIPLIER = (1 << 24) - 1
MAX_SHIFT = 62
MAX_ACC_BITS = 32


def _int_vector(name: str, values, n: int, lo: int, hi: int) -> tuple[int, ...]:
    try:
        vals = [int(v) for v in values]
        ok = all(float(v) == int(v) and not isinstance(v, bool) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of {n} integers, got {values!r}") from None
    if not ok or len(vals) != n:
        raise ValueError(f"{name} must be a sequence of {n} integers (one per channel), "
                         f"got {len(vals)} values: {values!r}")
    for c, v in enumerate(vals):
        if not lo <= v <= hi:
            raise ValueError(f"{name}[{c}] must be an integer from {lo} to {hi}, got {v!r}")
    return tuple(vals)


def _sbits(lo: int, hi: int) -> int:
    """Signed width holding every integer in ``[lo, hi]``."""
    return max(1, max(lo.bit_length(), (-lo - 1).bit_length() if lo < 0 else 0,
                      hi.bit_length()) + 1)


def sum_bits(acc_bits: int, bias_min: int, bias_max: int) -> int:
    """Signed width of ``acc + bias`` for ``acc_bits``-bit accumulators."""
    return _sbits(-(1 << (acc_bits - 1)) + min(bias_min, 0),
                  (1 << (acc_bits - 1)) - 1 + max(bias_max, 0))


def wide_multiplier(mult_bits: int, dsp_width: int) -> bool:
    """Whether a multiplier of ``mult_bits`` takes two DSP inputs (low and high part)."""
    return mult_bits > max(dsp_width - 1, 16)


def dsps_per_lane(acc_bits: int, bias_min: int, bias_max: int, dsp_width: int,
                  mult_bits: int = 16) -> int:
    """DSP multipliers one requantizer lane uses: 2 when the sum's high part is wide, twice
    that for a multiplier wider than one DSP input."""
    sb = sum_bits(acc_bits, bias_min, bias_max)
    ls = dsp_width - 1
    parts = 2 if sb > ls + 1 and sb - ls > 6 else 1
    return parts * (2 if wide_multiplier(mult_bits, dsp_width) else 1)


class Requantizer(ChannelConstantsUnit):
    """Dense stream of accumulators to dense stream of int8, per-channel constants.

    Element ``lane`` of beat ``b`` of a group is channel ``c = b * D + lane``;
    padding lanes of a group's last beat (``c >= C``) come out as 0. Groups
    are ``ceil(C / D)`` beats (a map position, or a whole vector); ``last``
    and ``end`` pass through.

    Pipeline registers S0-S5 and the skid output advance on one registered
    enable, so ``i.ready`` does not depend combinationally on ``o.ready``.
    The lanes' constants come from a ROM of one word per beat of a group,
    read one cycle ahead (``i.ready`` is low for one cycle after reset); with
    one beat per group they are wired in. The shift is split into a constant
    part ``base = min(shift) - 1`` and a variable part over the spread of the
    shifts, so a built unit serves constants whose shifts stay inside its
    ``[min, max]`` range (other shifts need a rebuild). One beat per cycle,
    no bubbles; latency :attr:`latency` cycles from an accepted input beat to
    its output beat (7 with the coarse shift stage, 6 without, one less with
    ``compact``). See docs/hardware.md, 'Requantizer and bias add'.

    Parameters
    ----------
    channels : int
        ``C``, elements per group.
    width : int
        ``D``, elements per beat.
    acc_bits : int
        Signed width of the input accumulators, 2 to 32.
    multiplier : sequence of int
        ``C`` multipliers, 0 to ``2**24 - 1``; beyond one DSP input (17 bits on
        ECP5, 16 on iCE40) each product takes a second block for the high part.
    shift : sequence of int
        ``C`` right shifts, 0 to 62.
    bias : sequence of int, optional
        ``C`` int32 biases added to the accumulators (default zeros).
    offset : sequence of int, optional
        ``C`` offsets added to the products before the shift, ``|offset| < 2**56``
        (a model's float bias at the output's fixed point); None: none.
    relu : bool
        Clamp at 0 instead of -128 (fused ReLU).
    lo, hi : int, optional
        The output range (default -128, or 0 with ``relu``, and 127).
    rounding : {"half-up", "half-even"}
        Rounding of ``p / 2**shift``: half towards +inf, or half to even
        (the bits shifted out are or-ed into a sticky bit on the way).
    loadable : bool
        Constants in a memory the host loader writes (:attr:`load_port`).
    dsp_width : int
        Signed input width of the part's multipliers (16 iCE40, 18 ECP5).
    compact : bool
        No S0 register (the smallest, slowest parts): the bias adder reads
        the input and the constants ROM directly. On iCE40 the S0 registers
        are copies of other registers or of block RAM data, each a logic
        cell of its own (about 50 cells a lane).

    Members
    -------
    i : In(stream.Signature(dense_layout(D, signed(acc_bits))))
    o : Out(stream.Signature(dense_layout(D, signed(8))))
    load_consts : In(LoadSignature(...))
        With ``loadable``: writes into the constants memory (``load_port``
        describes it), one word of ``D`` lanes per beat of a group.

    Raises
    ------
    ValueError
        A parameter is not an integer in its range, a constant vector does
        not have ``C`` entries or holds an out-of-range value, or ``relu`` is
        not a bool.
    """

    def __init__(self, channels: int, *, width: int = 8, acc_bits: int = 32, multiplier,
                 shift, bias=None, relu: bool = False, loadable: bool = False,
                 dsp_width: int = 18, compact: bool = False, lo: int | None = None,
                 hi: int | None = None, rounding: str = "half-up", offset=None):
        check_int("channels", channels, 1)
        check_int("width (D)", width, 1, 256)
        check_int("acc_bits", acc_bits, 2, MAX_ACC_BITS)
        for name, flag in (("relu", relu), ("compact", compact)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        if rounding not in ("half-up", "half-even"):
            raise ValueError(f"rounding must be 'half-up' or 'half-even', got {rounding!r}")
        self.channels, self.width, self.acc_bits, self.relu = channels, width, acc_bits, relu
        self.lo = (0 if relu else -128) if lo is None else (
            max(check_int("lo", lo, -255, 0), 0) if relu else check_int("lo", lo, -255, 0))
        self.hi = check_int("hi", hi, 0, 255) if hi is not None else 127
        if self.hi - self.lo > 255:
            raise ValueError(f"the output range {self.lo}..{self.hi} has more than 256 values")
        self.rounding = rounding
        #: Signed bits of an output: 8, or 9 for a range beyond int8's.
        self.out_bits = max(8, value_bits(self.lo, self.hi))
        self.compact = compact
        if dsp_width not in (16, 18):
            raise ValueError(f"dsp_width must be 16 (iCE40) or 18 (ECP5), got {dsp_width!r}")
        #: Unsigned low part of the split product, sized for one signed DSP input.
        self.lo_split = dsp_width - 1
        self.multiplier = _int_vector("multiplier", multiplier, channels, 0, MAX_MULTIPLIER)
        self.shift = _int_vector("shift", shift, channels, 0, MAX_SHIFT)
        self.bias = (_int_vector("bias", bias, channels, -(1 << 31), (1 << 31) - 1)
                     if bias is not None else (0,) * channels)
        self.offset = (None if offset is None else
                       _int_vector("offset", offset, channels, -(1 << 56) + 1, (1 << 56) - 1))
        self._init_signature(acc_bits, loadable)

    @property
    def dsps(self) -> int:
        """DSP multipliers: one to four per lane (see :func:`dsps_per_lane`)."""
        return self.width * dsps_per_lane(self.acc_bits, min(self.bias), max(self.bias),
                                          self.lo_split + 1, self._const_bits()[1])

    @property
    def latency(self) -> int:
        """Cycles from an accepted input beat to its output beat."""
        return (7 if self.shift_bits > 3 else 6) - int(self.compact)

    def _lane_constants(self, b: int, d: int) -> dict:
        """Bias, multiplier, variable shift ``t``, round flag (and offset) of lane ``d`` of
        beat ``b``."""
        c = b * self.width + d
        fields = {"bias": 0, "mult": 0, "t": 0, "rnd": 0}
        if self.offset is not None:
            fields["off"] = 0
        if c < self.channels:
            s = self.shift[c]
            fields.update(bias=self.bias[c], mult=self.multiplier[c],
                          t=max(s - 1, 0) - self.shift_base, rnd=int(s > 0))
            if self.offset is not None:
                fields["off"] = self.offset[c]
        return fields

    def _const_bits(self) -> tuple[int, int, int]:
        """Bits of the bias, the multiplier and the offset (0: none)."""
        bb = _sbits(min(self.bias), max(self.bias))
        mb = max(1, max(self.multiplier).bit_length())
        ob = 0 if self.offset is None else _sbits(min(self.offset), max(self.offset))
        return bb, mb, ob

    @property
    def consts_layout(self) -> data.ArrayLayout:
        """One word of the constants memory: per lane the bias, multiplier, variable
        shift ``t``, round flag (and offset)."""
        bb, mb, ob = self._const_bits()
        fields = {"bias": signed(bb), "mult": unsigned(mb), "t": unsigned(self.shift_bits),
                  "rnd": unsigned(1)}
        if ob:
            fields["off"] = signed(ob)
        return data.ArrayLayout(data.StructLayout(fields), self.width)

    def elaborate(self, platform):
        m = Module()
        D, ab = self.width, self.acc_bits
        _, mb, ob = self._const_bits()
        tb, base = self.shift_bits, self.shift_base
        sb = sum_bits(ab, min(self.bias), max(self.bias))  # acc + bias
        pb = max(sb + mb, ob) + (1 if ob else 0)  # product (plus offset), signed
        qb = max(pb - base, 11)  # p >> base (at least the 10 bits the rounding reads, signed)

        adv, take, consts = self._input(m)
        p = self.i.payload
        lanes = LaneStages(m, D)
        stage, advance = lanes.stage, lanes.advance

        if self.compact:  # S1 takes the input beat itself
            s0 = {"valid": take, "last": p.last, "end": p.end,
                  "acc": [p.data[d] for d in range(D)]}
        else:
            s0 = stage("s0", acc=signed(ab))
            with m.If(adv):
                m.d.sync += [s0["valid"].eq(take), s0["last"].eq(p.last),
                             s0["end"].eq(p.end)]
                m.d.sync += [s0["acc"][d].eq(p.data[d]) for d in range(D)]

        # ---------------- S1: sum = acc + bias (in the DSP blocks' input registers; a
        # fabric copy only for a narrow high part)
        ls = self.lo_split
        split = sb > ls + 1
        hi_bits = max(sb - ls, 1)
        narrow_hi = split and hi_bits <= 6
        off = {"off": signed(ob)} if ob else {}  # the offset travels to S3's add
        s1 = stage("s1", sh=tb, rnd=1, **off,
                   **({"sum": signed(sb), "mult": mb} if narrow_hi else {}))
        # ---------------- S2: partial products (low part unsigned 17 bits)
        s2 = stage("s2", sh=tb, rnd=1, **off,
                   **({"hi": signed(hi_bits + mb + 1)} if narrow_hi else {}))
        # The DSP products take their operands where S1 registers them, in the blocks'
        # own input registers, and are registered there as S2 (``registered_product``;
        # ECP5: MULT18X18D with CE = adv). A fabric S1 register into a bare multiplier,
        # out to S2, would be two routes across the die (gsc-cs fc2's requantizer: 15.4 ns,
        # the critical path of the routed whole build).
        total = [Signal(signed(sb), name=f"s0_sum{d}") for d in range(D)]  # S1's sum
        m.d.comb += [total[d].eq(s0["acc"][d] + consts[d].bias) for d in range(D)]
        # A wide multiplier is two DSP inputs: its low ``ls`` bits and the rest (weight 2**ls).
        wide = wide_multiplier(mb, ls + 1)
        m_lo = [consts[d].mult[:ls] if wide else consts[d].mult for d in range(D)]
        low = [total[d][:ls] if split else total[d] for d in range(D)]
        s2["lo"] = [registered_product(m, f"s2_lo{d}", low[d], m_lo[d], platform, en=adv)
                    for d in range(D)]
        if wide:
            s2["lo_h"] = [registered_product(m, f"s2_loh{d}", low[d], consts[d].mult[ls:],
                                             platform, en=adv) for d in range(D)]
        if split and hi_bits > 6:
            s2["hi"] = [registered_product(m, f"s2_hi{d}", total[d][ls:].as_signed(), m_lo[d],
                                           platform, en=adv) for d in range(D)]
            if wide:
                s2["hi_h"] = [registered_product(m, f"s2_hih{d}", total[d][ls:].as_signed(),
                                                 consts[d].mult[ls:], platform, en=adv)
                              for d in range(D)]
        # ---------------- S3: q = p >> base; S4 (wide spreads only), S5: the variable shift
        even = self.rounding == "half-even"
        st = {"sticky": 1} if even else {}  # a bit shifted out so far was 1
        s3 = stage("s3", q=signed(qb), sh=tb, rnd=1, **st)
        coarse = tb > 3
        if coarse:
            s4 = stage("s4", q=signed(qb), sh=3, rnd=1, **st)
        s5 = stage("s5", q=signed(qb), rnd=1, **st)

        def dropped(q, amount) -> Value:
            """Whether ``q >> amount`` (a variable amount) drops a 1."""
            return (q.as_unsigned() & ((Const(1, qb + 1) << amount) - 1)[:qb]) != 0

        with m.If(adv):
            pass_off = {"off": lambda d: consts[d].off} if ob else {}
            advance(s1, s0, sh=lambda d: consts[d].t, rnd=lambda d: consts[d].rnd, **pass_off,
                    **({"sum": lambda d: total[d], "mult": lambda d: consts[d].mult}
                       if narrow_hi else {}))
            pass_off = {"off": lambda d: s1["off"][d]} if ob else {}
            if split:
                # A narrow high part is a few shifted adds (no DSP block for it).
                advance(s2, s1, sh=lambda d: s1["sh"][d], rnd=lambda d: s1["rnd"][d], **pass_off,
                        **({"hi": lambda d: lut_mul(s1["sum"][d][ls:].as_signed(),
                                                    s1["mult"][d])} if narrow_hi else {}))
            else:
                advance(s2, s1, sh=lambda d: s1["sh"][d], rnd=lambda d: s1["rnd"][d], **pass_off)
            prod = []
            for d in range(D):
                lo_part = s2["lo"][d] + (s2["lo_h"][d] << ls) if wide else s2["lo"][d]
                if split:
                    hi_part = s2["hi"][d] + (s2["hi_h"][d] << ls) if "hi_h" in s2 \
                        else s2["hi"][d]
                    prod.append((hi_part << ls) + lo_part)
                else:
                    prod.append(lo_part)
                if ob:
                    prod[d] = prod[d] + s2["off"][d]
            advance(s3, s2, q=lambda d: prod[d] >> base,
                    sh=lambda d: s2["sh"][d], rnd=lambda d: s2["rnd"][d],
                    **({"sticky": lambda d: (prod[d][:base] != 0) if base else 0}
                       if even else {}))
            if coarse:
                coarse_amt = [Cat(Const(0, 3), s3["sh"][d][3:]) for d in range(D)]
                advance(s4, s3, q=lambda d: s3["q"][d] >> coarse_amt[d],
                        sh=lambda d: s3["sh"][d][:3], rnd=lambda d: s3["rnd"][d],
                        **({"sticky": lambda d: s3["sticky"][d] | dropped(s3["q"][d],
                                                                           coarse_amt[d])}
                           if even else {}))
                fine = s4
            else:
                fine = s3
            advance(s5, fine, q=lambda d: fine["q"][d] >> fine["sh"][d] if tb else fine["q"][d],
                    rnd=lambda d: fine["rnd"][d],
                    **({"sticky": lambda d: fine["sticky"][d] | dropped(fine["q"][d],
                                                                         fine["sh"][d])
                        if tb else fine["sticky"][d]} if even else {}))

        # ---------------- S6: round and saturate (combinational into the skid register)
        ys = [self._round_saturate(m, d, s5["q"][d], s5["rnd"][d],
                                   s5["sticky"][d] if even else None, qb) for d in range(D)]
        adv_ = skid_output(m, self.o, s5["valid"],
                           typed_payload(m, self.o, data=ys, last=s5["last"],
                                         end=s5["end"]))
        m.d.comb += adv.eq(adv_)
        return m


    def _round_saturate(self, m: Module, d: int, q, rnd, sticky, qb: int) -> Signal:
        return round_saturate(m, f"s6_{d}", q, rnd, sticky, qb, self.lo, self.hi, self.out_bits)


def round_saturate(m: Module, name: str, q, rnd, sticky, qb: int, lo: int, hi: int,
                   out_bits: int) -> Signal:
    """An output from ``q = p >> (s - 1)``: ``y = (q + up) >> 1`` (``rnd``) or ``y = q``,
    saturated to ``lo..hi``. Half up: ``up = 1``. Half to even (``sticky`` given):
    ``q``'s lowest bit is the half and ``sticky`` says whether more was dropped; an
    exact half rounds up only to an even result."""
    if sticky is not None:
        up = Signal(name=f"{name}_up")
        m.d.comb += up.eq(~(q[0] & ~sticky & ~q[1]))
        qa = Signal(signed(qb + 1), name=f"{name}_qa")
        m.d.comb += qa.eq(q + up)
        over = Mux(rnd, qa >= 2 * hi + 2, q > hi)
        under = Mux(rnd, qa < 2 * lo, q < lo)
    else:
        up = 1
        over = Mux(rnd, q >= 2 * hi + 1, q > hi)
        under = Mux(rnd, q < 2 * lo - 1, q < lo)
    nb = out_bits + 2  # q near the range: the rounding add's width
    small = Signal(signed(nb), name=f"{name}_small")
    m.d.comb += small.eq(Mux(rnd, (q[:nb].as_signed() + up) >> 1, q[:nb].as_signed()))
    y = Signal(signed(out_bits), name=f"{name}_y")
    m.d.comb += y.eq(Mux(over, hi, Mux(under, lo, small)))
    return y


class BiasAdd(wiring.Component):
    """Dense stream of accumulators plus a per-channel int32 bias: the logits path.

    A last overlay layer without requantization outputs its 32-bit sums.
    Element ``lane`` of beat ``b`` of a group is channel ``b * D + lane``;
    padding lanes come out as 0. ``last``/``end`` pass through.

    Throughput: one beat per cycle; latency 2 cycles (the add, then a skid
    output).

    Parameters
    ----------
    channels : int
        ``C``, elements per group.
    width : int
        ``D``, elements per beat.
    acc_bits : int
        Signed width of the input accumulators, 2 to 32.
    bias : sequence of int
        ``C`` int32 biases; every sum plus its bias must fit 32 bits (the
        compiler proves it).

    Members
    -------
    i : In(stream.Signature(dense_layout(D, signed(acc_bits))))
    o : Out(stream.Signature(dense_layout(D, signed(32))))
    """

    def __init__(self, channels: int, *, width: int = 8, acc_bits: int = 32, bias=None):
        check_int("channels", channels, 1)
        check_int("width (D)", width, 1, 256)
        check_int("acc_bits", acc_bits, 2, 32)
        self.channels, self.width, self.acc_bits = channels, width, acc_bits
        self.bias = (_int_vector("bias", bias, channels, -(1 << 31), (1 << 31) - 1)
                     if bias is not None else (0,) * channels)
        self.beats = -(-channels // width)
        self.in_layout = dense_layout(width, signed(acc_bits))
        self.out_layout = dense_layout(width, signed(32))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        C, D, B = self.channels, self.width, self.beats
        p = self.i.payload
        beat = Signal(range(max(B, 2)))
        s_v, s_last, s_end = Signal(), Signal(), Signal()
        s_sum = [Signal(signed(32), name=f"sum{d}") for d in range(D)]
        adv = skid_output(m, self.o, s_v,
                          typed_payload(m, self.o, data=s_sum, last=s_last, end=s_end))
        m.d.comb += self.i.ready.eq(adv)
        with m.If(adv):
            m.d.sync += [s_v.eq(self.i.valid), s_last.eq(p.last), s_end.eq(p.end)]
            for d in range(D):
                # The bias of lane d at the current beat, from a small constant table.
                table = [self.bias[b * D + d] if b * D + d < C else 0 for b in range(B)]
                valid_lane = [int(b * D + d < C) for b in range(B)]
                if B == 1:
                    bias_d, keep = Const(table[0], signed(32)), Const(valid_lane[0], 1)
                else:
                    bias_d = Array(Const(v, signed(32)) for v in table)[beat]
                    keep = Array(Const(v, 1) for v in valid_lane)[beat]
                m.d.sync += s_sum[d].eq(Mux(keep, p.data[d] + bias_d, 0))
            with m.If(self.i.valid):
                m.d.sync += beat.eq(Mux(p.last | (beat == B - 1), 0, beat + 1))
        return m
