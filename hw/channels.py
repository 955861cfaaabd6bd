"""Per-channel constants on a dense stream: what the requantizer and the rescaler share.

Both units apply one word of constants per lane and channel (``c = b * D +
lane`` for beat ``b`` of a group) in a pipeline of ``D`` lanes that advances
on one registered enable; their right shifts are a constant part and a
variable part over the channels' spread.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Const, Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .loader import LOADED_MEMORY_ATTRS, LoadPort
from .streams import dense_layout

__all__ = ["ChannelConstantsUnit", "LaneStages"]


class ChannelConstantsUnit(wiring.Component):
    """Base of a unit with a word of per-channel constants per beat of a group.

    Subclasses set ``channels``, ``width`` (``D``), ``beats``, ``shift`` (one
    per channel), ``load_port`` (or None) and ``compact``, and define
    :attr:`consts_layout` and ``_lane_constants(b, d) -> dict``.
    """

    def _init_signature(self, in_bits: int, loadable: bool) -> None:
        """Beats per group, the stream layouts (``out_bits`` set), the constants' load
        port when ``loadable`` (always a memory then), and the component's signature."""
        self.beats = -(-self.channels // self.width)
        self.in_layout = dense_layout(self.width, signed(in_bits))
        self.out_layout = dense_layout(self.width, signed(self.out_bits))
        self.load_port = (LoadPort("consts", self.width * self.consts_layout.elem_shape.size,
                                   self.beats, tuple(self._const_words())) if loadable else None)
        self.load_ports = [self.load_port] if loadable else []
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
            **{lp.member: In(lp.signature) for lp in self.load_ports},
        })

    @property
    def cycles_per_group(self) -> int:
        """Steady-state cycles per group."""
        return self.beats

    @property
    def shift_base(self) -> int:
        """The constant part of every shift: ``min(shift) - 1`` (0 when a shift is 0)."""
        return max(min(self.shift) - 1, 0)

    @property
    def shift_bits(self) -> int:
        """Bits of the variable part ``t = max(s - 1, 0) - base`` (0: no shifter)."""
        return (max(max(self.shift) - 1, 0) - self.shift_base).bit_length()

    def _const_words(self) -> list[int]:
        """The constants memory: one word of ``D`` lanes per beat of a group."""
        layout = self.consts_layout
        return [layout.const([self._lane_constants(b, d) for d in range(self.width)]).as_bits()
                for b in range(self.beats)]

    def _input(self, m: Module) -> tuple[Signal, Signal, list]:
        """The input side: ``(adv, take, consts)``. ``adv`` (driven by the caller) moves
        the pipeline; ``take`` is an accepted input beat; ``consts[d]`` holds lane ``d``'s
        constants (fields by name) of the beat in S0 (with ``compact``: of the beat
        offered at the input)."""
        adv, take = Signal(name="adv"), Signal(name="take")
        primed = Signal()  # the ROM's read-ahead needs one cycle after reset
        m.d.sync += primed.eq(1)
        m.d.comb += [self.i.ready.eq(adv & primed), take.eq(self.i.valid & self.i.ready)]
        B = self.beats
        bg = Signal(range(max(B, 2)))  # beat of the group offered at the input
        bg_next = Signal.like(bg)  # ... on the next cycle
        m.d.comb += bg_next.eq(bg)
        with m.If(take):
            with m.If(self.i.payload.last | (bg == B - 1)):
                m.d.comb += bg_next.eq(0)
            with m.Else():
                m.d.comb += bg_next.eq(bg + 1)
        m.d.sync += bg.eq(bg_next)
        return adv, take, self._lane_consts(m, bg_next, adv)

    def _lane_consts(self, m: Module, bg_next, adv) -> list:
        """Wired in for a one-beat group, else read ahead from the constants ROM (the
        block RAM's slow clock-to-out then ends in a register, S0's, unless ``compact``)."""
        layout, D = self.consts_layout, self.width
        lane = layout.elem_shape
        if self.beats == 1 and self.load_port is None:
            return [SimpleNamespace(**{f: Const(v, lane.members[f])
                                       for f, v in self._lane_constants(0, d).items()})
                    for d in range(D)]
        lp = self.load_port
        words = lp.hw_init() if lp else self._const_words()
        m.submodules.consts = rom = Memory(shape=layout, depth=lp.hw_depth if lp else self.beats,
                                           init=[layout.from_bits(w) for w in words],
                                           attrs=LOADED_MEMORY_ATTRS if lp else None)
        if lp is not None:
            wp = rom.write_port()
            load = self.load_consts
            m.d.comb += [wp.addr.eq(load.addr), wp.data.eq(load.data), wp.en.eq(load.en)]
        port = rom.read_port()
        m.d.comb += [port.addr.eq(bg_next), port.en.eq(1)]
        if self.compact:
            return [port.data[d] for d in range(D)]
        s0_consts = Signal(layout)
        with m.If(adv):
            m.d.sync += s0_consts.eq(port.data)
        return [s0_consts[d] for d in range(D)]


class LaneStages:
    """Registered stages of a ``D``-lane pipeline that moves on one enable.

    ``stage(name, **fields)`` makes a stage's registers: ``valid``, ``last``,
    ``end`` and, per field, one register per lane (no reset: ``valid`` carries
    it, and synthesis can fold them into DSP blocks' registers);
    ``advance(dst, src, **values)``, under the enable, moves ``src``'s flags into
    ``dst`` and ``values[f](d)`` into lane ``d`` of field ``f``.
    """

    def __init__(self, m: Module, lanes: int):
        self.m, self.lanes = m, lanes

    def stage(self, name: str, **fields) -> dict:
        regs = {k: Signal(name=f"{name}_{k}") for k in ("valid", "last", "end")}
        for f, shape in fields.items():
            regs[f] = [Signal(shape, name=f"{name}_{f}{d}", reset_less=True)
                       for d in range(self.lanes)]
        return regs

    def advance(self, dst: dict, src: dict, **values) -> None:
        self.m.d.sync += [dst[k].eq(src[k]) for k in ("valid", "last", "end")]
        for f, fn in values.items():
            self.m.d.sync += [dst[f][d].eq(fn(d)) for d in range(self.lanes)]

