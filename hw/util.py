"""Small helpers shared by the hardware units: widths, parameter checks, the skid output stage."""

from __future__ import annotations

from functools import reduce
from operator import or_

from amaranth.hdl import (ClockSignal, Const, Elaboratable, Instance, Module, Mux, ResetSignal, Shape,
                          Signal, Value)
from amaranth.lib import data
from amaranth.utils import ceil_log2

__all__ = ["bits", "value_bits", "check_int", "onehot", "popcount", "mux_tree", "skid_output", "lut_mul", "const_mul",
           "replicate", "KEEP_REPLICAS", "is_ecp5", "registered_product"]


def value_bits(lo: int, hi: int) -> int:
    """Signed bits that hold every integer of ``lo..hi``."""
    return max((-lo - 1).bit_length() if lo < 0 else 0, hi.bit_length() if hi > 0 else 0) + 1


def bits(n: int) -> int:
    """Bits to hold 0..n-1 (at least 1)."""
    return max(1, ceil_log2(n))


def check_int(name: str, v, lo: int, hi: int | None = None) -> int:
    """``v`` if it is an integer in ``lo..hi``, else a ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {rng}, got {v!r}")
    return v


def onehot(pairs, width: int = 1) -> Value:
    """OR of ``value`` over ``(condition, value)`` pairs (at most one condition true).

    ``width`` is the width of the zero returned when there are no pairs.
    """
    terms = [Mux(c, v, 0) for c, v in pairs]
    return reduce(or_, terms) if terms else Const(0, width)


def popcount(bits) -> Value:
    """Number of set bits, as a balanced adder tree."""
    terms = [b.as_unsigned() if isinstance(b, Value) else Const(b, 1) for b in bits]
    if not terms:
        return Const(0, 1)
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def mux_tree(words: list, sel: Value) -> Value:
    """``words[sel]`` as a binary tree of two-way multiplexers on ``sel``'s bits
    (``sel < len(words)``; past the end, the last word).

    yosys maps an ``Array`` of a size that is not a power of two into several
    times the LUTs of this tree (five 8-bit words: 81 LUT4, 40 PFUMX and 24
    L6MUX21 against 24 LUT4).
    """
    n = len(words)
    if n == 1:
        return words[0]
    depth = (n - 1).bit_length()
    level = list(words) + [words[-1]] * ((1 << depth) - n)
    for i in range(depth):
        level = [Mux(sel[i], level[2 * j + 1], level[2 * j]) for j in range(len(level) // 2)]
    return level[0]


def typed_payload(m: Module, o, **fields) -> data.View:
    """A payload for stream ``o`` with its fields driven by name.

    A field given as a list drives the elements of an array field one by one;
    any other value drives the whole field (a flat value of the field's width).
    """
    payload = Signal(o.payload.shape(), name="beat")
    for name, value in fields.items():
        field = payload[name]
        if isinstance(value, (list, tuple)):
            m.d.comb += [field[k].eq(v) for k, v in enumerate(value)]
        else:
            m.d.comb += field.eq(value)
    return payload


def skid_output(m: Module, o, valid: Value, payload: Value) -> Signal:
    """Drive stream ``o`` from the last stage of a pipeline through a skid buffer.

    ``valid``/``payload`` are the last stage's output in the current cycle;
    it is taken whenever the returned ``adv`` is high. ``adv`` is a register
    (no skid entry held), so a pipeline that advances on ``adv`` has no
    combinational path from ``o.ready``; a beat offered while the output
    register is full and not drained goes into the skid register, and the
    pipeline holds on the following cycles until it drains. Throughput: one
    beat per cycle while ``o.ready`` is high; latency one cycle.
    """
    width = Shape.cast(o.payload.shape()).width
    od = Signal(width, name="out_data")
    sd = Signal(width, name="skid_data")
    ov = Signal(name="out_valid")
    sv = Signal(name="skid_valid")
    adv = Signal(name="adv")
    m.d.comb += [adv.eq(~sv), o.valid.eq(ov), o.payload.as_value().eq(od)]
    with m.If(sv):
        with m.If(o.ready):
            m.d.sync += [od.eq(sd), sv.eq(0)]
    with m.Elif(~ov | o.ready):
        m.d.sync += [ov.eq(valid), od.eq(payload)]
    with m.Elif(valid):
        m.d.sync += [sv.eq(1), sd.eq(payload)]
    return adv


def lut_mul(a: Value, b: Value) -> Value:
    """``a * b`` for a narrow signed ``a`` as shifted adds of unsigned ``b``.

    Synthesis sees adders, not a multiplier, so no DSP block is spent on a
    product that a few LUTs make (the high part of a split product).
    """
    n = len(a)
    acc = None
    for i in range(n):
        term = Mux(a[i], b.as_unsigned() << i, 0)
        if i == n - 1:  # two's complement: the sign bit weighs -2**(n-1)
            acc = (0 - term) if acc is None else acc - term
        else:
            acc = term if acc is None else acc + term
    return acc


def const_mul(a: Value, c: int) -> Value:
    """``a * c`` for unsigned ``a`` and a constant ``c >= 0``, as shifted adds.

    Synthesis maps a wide product by a constant to a DSP block; an address
    times a small constant is a few adders.
    """
    terms = [a.as_unsigned() << i for i in range(c.bit_length()) if c >> i & 1]
    if not terms:
        return Const(0, 1)
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc


#: Name prefix of the submodules that hold register copies (:func:`replicate`).
REPLICA_PREFIX = "replica_"

#: yosys command (after reading the design) that keeps each register copy in its own
#: module, so ``opt_merge`` cannot fold identical copies back into one flip-flop.
#: (A ``keep`` attribute on the flip-flops does that too, but makes yosys-abc fail on
#: some designs.)
KEEP_REPLICAS = f"setattr -mod -set keep_hierarchy 1 *.{REPLICA_PREFIX}*"


class Replica(Elaboratable):
    """A bare register, ``q`` takes ``d`` every cycle (no reset, no enable: the module
    holds one flip-flop per bit and no logic)."""

    def __init__(self, shape):
        self.d = Signal(shape)
        self.q = Signal(shape, reset_less=True)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.q.eq(self.d)
        return m


def replicate(m: Module, name: str, value: Value, copies: int, *, en: Value | None = None,
              reset_less: bool = False) -> list[Signal]:
    """``copies`` registers of ``value`` (loaded when ``en``), for a wide fan-out.

    One register driving every lane of a wide unit spans the die (a 13 ns route
    for the accumulator-buffer select of a 96-multiplier engine on an ECP5-85F);
    a copy per group of lanes is placed beside its group. Each copy is its own
    submodule, which board builds keep as a hierarchy (:data:`KEEP_REPLICAS`);
    its enable and reset are logic in ``m``, so the submodule is a bare register
    (yosys-abc fails on some of the tiny modules a register with logic makes).
    Returns the copies' outputs.
    """
    value = Value.cast(value)
    if copies == 1:  # nothing to keep apart: a plain register, which synthesis may simplify
        reg = Signal(value.shape(), name=name, reset_less=reset_less)
        with m.If(Const(1) if en is None else en):
            m.d.sync += reg.eq(value)
        return [reg]
    out = []
    for i in range(copies):
        rep = Replica(value.shape())
        m.submodules[f"{REPLICA_PREFIX}{name}_{i}"] = rep
        d = value if en is None else Mux(en, value, rep.q)
        if not reset_less:
            d = Mux(ResetSignal(), 0, d)
        m.d.comb += rep.d.eq(d)
        out.append(rep.q)
    return out


def is_ecp5(platform) -> bool:
    """The platform is a Lattice ECP5 (``LFE5U``/``LFE5UM`` devices)."""
    return str(getattr(platform, "device", "")).startswith("LFE5")


def registered_product(m: Module, name: str, a: Value, b: Value, platform, *,
                       a_registered: bool = False, en: Value | None = None) -> Signal:
    """``a * b``, two cycles later: signed operands of at most 18 bits, unsigned of 17.

    Both operands are registered, then their product (no reset); with ``en``
    the three registers load only when it is high (a stalling pipeline's
    advance), else every cycle.
    ``a_registered``: ``a`` is a register already (it takes the place of the
    operand register, so the product is one cycle after ``a``). On ECP5 that
    leaves the block's register A out while B's is in, a mix nextpnr times as
    if neither input were registered, so the engines do not ask for it there.
    On ECP5 it is one ``MULT18X18D`` with its input and output registers
    enabled (``REG_INPUTA/B_CLK``, ``REG_OUTPUT_CLK``): yosys maps only the
    multiplier itself into a DSP block, and the fabric registers it leaves
    around it sit far from the die's DSP rows (on an ECP5-85F, routes of 5 ns
    into and out of the block). Elsewhere it is two fabric registers, ``*``
    and a third register.
    """
    a, b = Value.cast(a), Value.cast(b)
    for v in (a, b):
        if len(v) > (18 if v.shape().signed else 17):
            raise ValueError(f"registered_product takes signed operands of at most 18 bits "
                             f"and unsigned of 17, got {v.shape()}")
    prod = Signal((a * b).shape(), name=name, reset_less=True)
    if not is_ecp5(platform):  # (synthesis merges equal operand registers of a shared b)
        ra = a if a_registered else Signal(a.shape(), name=f"{name}_a", reset_less=True)
        rb = Signal(b.shape(), name=f"{name}_b", reset_less=True)
        with m.If(Const(1) if en is None else en):
            m.d.sync += [rb.eq(b), prod.eq(ra * rb)]
            if not a_registered:
                m.d.sync += ra.eq(a)
        return prod
    ea = Signal(18, name=f"{name}_a")
    eb = Signal(18, name=f"{name}_b")
    p = Signal(36, name=f"{name}_p")
    # Each operand extends by its own signedness (unsigned: a zero above, so the
    # block's signed product is right); the product keeps ``a * b``'s shape.
    m.d.comb += [ea.eq(a), eb.eq(b), prod.eq(p[:len(prod)])]
    ports = {f"i_A{i}": ea[i] for i in range(18)}
    ports.update({f"i_B{i}": eb[i] for i in range(18)})
    ports.update({f"o_P{i}": p[i] for i in range(36)})
    m.submodules[f"{name}_dsp"] = Instance(
        "MULT18X18D",
        p_REG_INPUTA_CLK="NONE" if a_registered else "CLK0", p_REG_INPUTA_CE="CE0",
        p_REG_INPUTA_RST="RST0",
        p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
        p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
        p_REG_PIPELINE_CLK="NONE", p_REG_INPUTC_CLK="NONE",
        p_GSR="DISABLED", p_RESETMODE="SYNC", p_SOURCEB_MODE="B_SHIFT",
        p_CLK0_DIV="ENABLED", p_MULT_BYPASS="DISABLED",
        i_SIGNEDA=Const(1), i_SIGNEDB=Const(1), i_SOURCEA=Const(0), i_SOURCEB=Const(0),
        i_CLK0=ClockSignal(), i_CE0=Const(1) if en is None else en, i_RST0=Const(0), **ports)
    return prod
