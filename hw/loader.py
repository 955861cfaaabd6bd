"""The weight loader's path into the core: one bus, an address decoder, a port per memory.

A unit with a loadable memory describes it with a :class:`LoadPort` (name,
width, depth, contents) and takes its writes through a member
``load_<name>: In(LoadSignature(width))`` of its signature. The core gathers
every unit's ports behind one :func:`load_bus_signature` member and a
:class:`LoadDecoder`, which selects the target memory by number (the order
of the core's ``load_ports``, which is the weight bundle's order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .util import check_int

__all__ = ["LoadPort", "LoadSignature", "load_bus_signature", "LoadDecoder", "PATCH_BLOCK",
           "LOAD_ADDR_BITS", "LOADED_MEMORY_ATTRS"]

#: Words of one iCE40 block RAM in its 256 x 16 mode: patchable memories are padded
#: to whole blocks.
PATCH_BLOCK = 256

#: Address bits of a load write, whatever the memory's depth: writes may reach every
#: word of a padded memory, so synthesis keeps (and initialises) all of it.
LOAD_ADDR_BITS = 16

#: Attributes of a memory whose only write port is the loader's. The host loads while
#: the core is idle, so a read never meets a write of the same word: on the board the
#: collision is left undefined (yosys's name for it, ``no_rw_check``; the board flow
#: turns it into the read ports' ``COLLISION_X_MASK``), which spares the comparator,
#: data multiplexer and registers yosys adds per read port to give a block RAM the
#: old-data semantics across its two ports (52-bit words: 74 LUT4 and 116 FF).
LOADED_MEMORY_ATTRS = {"no_rw_check": 1}


class LoadSignature(wiring.Signature):
    """One word written into one memory: ``addr``, ``data``, ``en`` (from the loader's side)."""

    def __init__(self, width: int):
        check_int("width", width, 1)
        self.width = width
        super().__init__({"addr": Out(LOAD_ADDR_BITS), "data": Out(width), "en": Out(1)})

    def __eq__(self, other):
        return isinstance(other, LoadSignature) and other.width == self.width

    def __repr__(self):
        return f"LoadSignature({self.width})"


def load_bus_signature(width: int, target_bits: int = 8) -> wiring.Signature:
    """The core's load bus: a word for the memory numbered ``target`` (valid while ``en``)."""
    return wiring.Signature({"en": Out(1), "target": Out(target_bits),
                             "addr": Out(LOAD_ADDR_BITS), "data": Out(width)})


@dataclass(eq=False)
class LoadPort:
    """A memory of a unit that the host loader writes: what it is and what it holds.

    Attributes
    ----------
    name : str
        The memory's name in its unit; the core renames it
        ``s<k>_<unit>.<name>`` (the memory image's name).
    width, depth : int
        Bits per word and words.
    image : tuple of int
        The memory's contents, for the weight bundle (also when the memory
        itself starts empty: ``has_init`` False, iCE40 SPRAM).
    member : str
        The unit's signature member that takes the writes (``load_<name>``).
    patch_seed : int or None
        Set for a bitstream whose block-RAM contents are patched later (see
        :mod:`cosparse.boards.patch`): the memory is built with seeded random
        contents over whole block RAMs (:data:`PATCH_BLOCK` words), so every
        bit column is a pattern the patcher can find.
    """

    name: str
    width: int
    depth: int
    image: tuple[int, ...]
    has_init: bool = True

    def __post_init__(self):
        self.member = f"load_{self.name}"
        self.patch_seed: int | None = None

    @property
    def signature(self) -> LoadSignature:
        return LoadSignature(self.width)

    @property
    def word_bytes(self) -> int:
        return -(-self.width // 8)

    @property
    def hw_depth(self) -> int:
        """Depth of the memory in hardware (padded for patching)."""
        if self.patch_seed is None:
            return self.depth
        return -(-self.depth // PATCH_BLOCK) * PATCH_BLOCK

    def placeholder(self) -> tuple[int, ...]:
        """The seeded random contents a patchable memory is built with."""
        rng = np.random.default_rng(self.patch_seed)
        return tuple(int.from_bytes(rng.bytes(self.word_bytes), "little")
                     & ((1 << self.width) - 1) for _ in range(self.hw_depth))

    def hw_init(self) -> tuple[int, ...] | list:
        """Initial contents in hardware: none (SPRAM), the placeholder, or the image."""
        if not self.has_init:
            return []
        return self.placeholder() if self.patch_seed is not None else self.image


class LoadDecoder(wiring.Component):
    """The load bus to one write port per memory, each registered.

    A word on the bus lands in its target memory the next cycle: each
    target has its own address, data and enable registers, so the route
    from the loader to a memory anywhere on the die has a cycle of its own.

    Parameters
    ----------
    widths : list of int
        Bits per word of each target, in target order.

    Members
    -------
    bus : In(load_bus_signature(max(widths)))
    t<k> : Out(LoadSignature(widths[k]))
        Target ``k``'s writes.
    """

    def __init__(self, widths: list[int]):
        if not widths:
            raise ValueError("a load decoder needs at least one target")
        if len(widths) > 255:
            raise ValueError(f"at most 255 load targets, got {len(widths)}")
        self.widths = [check_int(f"widths[{k}]", w, 1) for k, w in enumerate(widths)]
        members = {"bus": In(load_bus_signature(max(self.widths)))}
        members.update({f"t{k}": Out(LoadSignature(w)) for k, w in enumerate(self.widths)})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        for k, width in enumerate(self.widths):
            port = getattr(self, f"t{k}")
            addr = Signal(LOAD_ADDR_BITS, name=f"t{k}_addr")
            data = Signal(width, name=f"t{k}_data", reset_less=True)
            en = Signal(name=f"t{k}_en")
            m.d.sync += en.eq(bus.en & (bus.target == k))
            with m.If(bus.en):
                m.d.sync += [addr.eq(bus.addr), data.eq(bus.data[:width])]
            m.d.comb += [port.addr.eq(addr), port.data.eq(data), port.en.eq(en)]
        return m
