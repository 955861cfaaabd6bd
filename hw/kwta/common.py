"""Parts shared by the k-WTA units: boost checks, the key datapath, the winners layout,
the serial output beat."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory
from amaranth.utils import ceil_log2

from ..util import check_int
from ..util import value_bits as range_bits

__all__ = ["MAX_BOOST", "MAX_KEY_BOOST", "boost_dsps", "key_bits", "check_key_shift", "check_rescale", "check_range", "rescaled",
           "offset_key", "check_boost", "boost_rom", "Keys", "SerialOutput",
           "winner_layout", "winners_layout"]

#: Largest boost factor (unsigned 16 bits, as in the IR); 17 bits for quantized keys.
MAX_BOOST = (1 << 16) - 1
MAX_KEY_BOOST = (1 << 17) - 1


def boost_dsps(boost, lanes: int, dsp_width: int = 18) -> int:
    """DSP products of the keys ``x * boost``: one a lane, two for boosts wider than one
    unsigned DSP input (17 bits on ECP5, 16 on iCE40), none without boost."""
    if boost is None:
        return 0
    return lanes * (2 if max(boost).bit_length() > max(dsp_width - 1, 16) else 1)


def key_bits(boost, key_shift: int | None = None, value_bits: int = 8,
             key_range: tuple[int, int] = (-128, 127)) -> int:
    """Signed width of the key: ``x * boost`` for ``value_bits``-bit ``x``, ``value_bits +
    ceil(log2(max boost))``; that of ``key_range`` for a quantized key (``key_shift``)."""
    if key_shift is not None:
        return max(8, range_bits(*key_range))
    if boost is None:
        return value_bits
    return value_bits + ceil_log2(max(boost))


def check_range(name: str, rng) -> tuple[int, int]:
    """``(lo, hi)``: integers with ``lo <= 0 <= hi``, at most 256 values within -255..255."""
    try:
        lo, hi = (int(v) for v in rng)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (lo, hi), got {rng!r}") from None
    if not -255 <= lo <= 0 <= hi <= 255 or hi - lo > 255:
        raise ValueError(f"{name} must have lo <= 0 <= hi, at most 256 values within "
                         f"-255..255, got {rng!r}")
    return lo, hi


def check_key_shift(key_shift) -> int | None:
    """None, or an integer from 0 to 32: the quantized key's right shift."""
    if key_shift is not None:
        check_int("key_shift", key_shift, 0, 32)
    return key_shift


def check_boost(boost, n: int, what: str, top: int = MAX_BOOST) -> tuple[int, ...] | None:
    """A tuple of ``n`` integers in 1..``top``, or None (all ones is None)."""
    if boost is None:
        return None
    try:
        vals = [int(b) for b in boost]
        ok = all(float(b) == int(b) for b in boost)
    except (TypeError, ValueError):
        raise ValueError(f"boost must be a sequence of {n} integers, got {boost!r}") from None
    if not ok or len(vals) != n:
        raise ValueError(f"boost must be a sequence of {n} integers (one per {what}), "
                         f"got {len(vals)} values: {boost!r}")
    bad = [b for b in vals if not 1 <= b <= top]
    if bad:
        raise ValueError(f"boost values must be integers from 1 to {top}, got {bad[0]!r}")
    if all(b == 1 for b in vals):
        return None
    return tuple(vals)


def boost_rom(boost, D: int, beats: int, bb: int) -> Memory | None:
    """Per-beat boost factors of the ``D`` lanes, one word per beat of a group."""
    if boost is None or beats == 1:
        return None
    words = []
    for b in range(beats):
        w = 0
        for d in range(D):
            c = b * D + d
            w |= (boost[c] if c < len(boost) else 0) << (d * bb)
        words.append(w)
    return Memory(shape=unsigned(D * bb), depth=beats, init=words)


def winner_layout(index_bits: int, value_bits: int = 8) -> data.StructLayout:
    """One winner candidate: ``index``, ``value`` and ``valid`` (the cell holds one)."""
    return data.StructLayout({"index": unsigned(index_bits), "value": signed(value_bits),
                              "valid": unsigned(1)})


def winners_layout(k: int, index_bits: int, value_bits: int = 8) -> data.StructLayout:
    """A group's ``k`` winner cells in any order, and the frame's ``end`` flag."""
    return data.StructLayout({"cells": data.ArrayLayout(winner_layout(index_bits, value_bits),
                                                        k),
                              "end": unsigned(1)})


def offset_key(x, b, kb: int, key_shift: int | None = None,
               key_range: tuple[int, int] = (-128, 127)) -> Value:
    """Offset-binary key of signed ``x`` with boost ``b`` (None: 1), ``kb`` bits.

    The sign bit is inverted, so unsigned comparison orders the keys like
    the signed products ``x * b``. With ``key_shift`` the key is quantized
    (``kb`` bits): ``x * b / 2**key_shift`` rounded half to even, saturated
    to ``key_range``, as the golden model's
    :func:`~cosparse.sim.golden.kwta_keys`.
    """
    if key_shift is not None:
        prod = x.as_signed() if b is None else x.as_signed() * b
        if len(prod) <= key_shift:  # sign-extended past the shift: its bits are all dropped
            prod = Cat(prod, prod[-1].replicate(key_shift + 1 - len(prod))).as_signed()
        r = prod
        if key_shift:
            q = prod >> key_shift  # arithmetic: prod is signed
            low = prod.as_unsigned()[:key_shift]
            half = 1 << (key_shift - 1)
            r = q + ((low > half) | ((low == half) & q[0]))
        lo, hi = key_range
        sat = Mux(r > hi, hi, Mux(r < lo, lo, r))
        return Cat(sat[:kb - 1], ~sat[kb - 1])
    if b is None:
        n = len(x)
        return Cat(x[:n - 1], ~x[n - 1])
    prod = x.as_signed() * b
    return Cat(prod[:kb - 1], ~prod[kb - 1])


def check_rescale(rescale) -> tuple[int, int] | None:
    """None, or ``(m, s)``: a multiplier from 1 to ``2**24 - 1`` and a shift from 0 to 56."""
    if rescale is None:
        return None
    try:
        m, s = (int(v) for v in rescale)
    except (TypeError, ValueError):
        raise ValueError(f"rescale must be (multiplier, shift), got {rescale!r}") from None
    check_int("rescale multiplier", m, 1, (1 << 24) - 1)
    check_int("rescale shift", s, 0, 56)
    return m, s


def rescaled(x, rescale: tuple[int, int] | None,
             out_range: tuple[int, int] = (-128, 127)) -> Value:
    """The value a winner keeps: ``x``, or ``x * m / 2**s`` rounded half to even and
    saturated to ``out_range`` for ``rescale = (m, s)`` (the golden model's
    ``kwta_values``)."""
    if rescale is None:
        return x
    m, s = rescale
    ob = max(8, range_bits(*out_range))
    u = offset_key(x, Const(m, unsigned(m.bit_length())), ob, s, out_range)
    return Cat(u[:ob - 1], ~u[ob - 1]).as_signed()


class Keys:
    """Key datapath: lane boosts one cycle after the beat address, then ``x * boost``.

    ``lanes(port)`` gives the ``D`` boost values of a ROM read port (or the
    constants when a group is one beat); ``ukey(x, b)`` is the offset key.
    The ROM (:attr:`rom`, None when there is none) is added to the module by
    the unit that owns it.
    """

    def __init__(self, boost, D: int, beats: int, key_shift: int | None = None,
                 value_bits: int = 8, key_range: tuple[int, int] = (-128, 127)):
        self.boost, self.D, self.beats, self.key_shift = boost, D, beats, key_shift
        self.key_range = key_range
        self.kb = key_bits(boost, key_shift, value_bits, key_range)
        self.bb = max(boost).bit_length() if boost is not None else 1
        self.rom = boost_rom(boost, D, beats, self.bb)

    def lanes(self, m: Module, addr, en) -> list | None:
        """The ``D`` boost values of beat ``addr`` (a ROM read, one cycle later), or None."""
        if self.boost is None:
            return None
        if self.rom is None:
            return [Const(self.boost[d] if d < len(self.boost) else 0, self.bb)
                    for d in range(self.D)]
        port = self.rom.read_port()
        m.d.comb += [port.addr.eq(addr), port.en.eq(en)]
        return [port.data[d * self.bb:(d + 1) * self.bb] for d in range(self.D)]

    def ukey(self, x, b) -> Value:
        """Offset-binary key of int8 ``x`` with boost ``b`` (None: 1), ``kb`` bits."""
        return offset_key(x, b, self.kb, self.key_shift, self.key_range)


class SerialOutput:
    """The output side of a serial k-WTA: a beat being filled, then the output register.

    ``append(entry)`` adds an entry to the beat being filled; ``send(n,
    ents, last, end)`` loads the output register (when ``free``);
    ``with_entry(entry, has)`` is the filled entries plus ``entry`` (when
    ``has``) at the next place, zeros after: a beat's canonical contents.
    """

    def __init__(self, m: Module, o, R: int, k: int, ib: int, vb: int = 8):
        self.m, self.R = m, R
        self.b_ent = [Signal(ib + vb, name=f"b_ent_{r}") for r in range(R)]
        self.b_cnt = Signal(range(R + 1))
        self.o_v, self.o_last, self.o_end = Signal(), Signal(), Signal()
        self.o_cnt = Signal(range(R + 1))
        self.o_ent = [Signal(ib + vb, name=f"o_ent_{r}") for r in range(R)]
        self.free = Signal()
        m.d.comb += self.free.eq(~self.o_v | o.ready)
        with m.If(o.ready):
            m.d.sync += self.o_v.eq(0)
        op = o.payload
        m.d.comb += [o.valid.eq(self.o_v), op.count.eq(self.o_cnt), op.last.eq(self.o_last),
                     op.end.eq(self.o_end)]
        for r in range(min(R, k)):
            m.d.comb += [op.entries[r].index.eq(self.o_ent[r][:ib]),
                         op.entries[r].value.eq(self.o_ent[r][ib:])]

    def with_entry(self, entry, has=1) -> list:
        b, n = self.b_ent, self.b_cnt
        return [Mux(n > r, b[r], Mux((n == r) & has, entry, 0)) for r in range(self.R)]

    def send(self, n, ents, last, end) -> None:
        self.m.d.sync += [self.o_v.eq(1), self.o_cnt.eq(n), self.o_last.eq(last),
                          self.o_end.eq(end)]
        self.m.d.sync += [o.eq(e) for o, e in zip(self.o_ent, ents)]

    def append(self, entry) -> None:
        self.m.d.sync += self.b_cnt.eq(self.b_cnt + 1)
        for r in range(self.R):
            with self.m.If(self.b_cnt == r):
                self.m.d.sync += self.b_ent[r].eq(entry)
