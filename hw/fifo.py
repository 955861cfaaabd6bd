"""A first-word-fall-through FIFO whose reader's ``r_en`` reaches a pointer, not the data.

:class:`BufferedFIFO` behaves as Amaranth's ``SyncFIFOBuffered`` cycle for
cycle (``w_rdy``, ``r_rdy``, ``level`` and the data of every word read). The
buffered FIFO's head is an output register that loads when the reader takes
a word, so the reader's ``r_en``, often from a unit placed far away, is the
clock enable of a register as wide as the word. On ECP5, a FIFO small enough
for LUT RAM keeps every word in the memory and reads the head asynchronously
at a pointer register: ``r_en`` then moves a few pointer bits only. Either
way a read never meets a write of the same word, and the storage says so to
the board flow (:data:`STORAGE_ATTRS`).
"""

from __future__ import annotations

from amaranth.hdl import Elaboratable, Module, Mux, Signal, Value
from amaranth.lib.fifo import FIFOInterface, SyncFIFOBuffered
from amaranth.lib.memory import Memory

from .util import NO_RW_CHECK, in_lut_ram, is_ecp5

__all__ = ["BufferedFIFO", "STORAGE_ATTRS"]

#: Attributes of a FIFO's storage: a word is read only while it is held and written
#: only while its place is free, so a read never meets a write of the same word
#: (:data:`~cosparse.hw.util.NO_RW_CHECK`).
STORAGE_ATTRS = NO_RW_CHECK


class BufferedFIFO(Elaboratable, FIFOInterface):
    """``SyncFIFOBuffered``'s behaviour, its head read from LUT RAM where that fits.

    Parameters
    ----------
    width, depth : int
        Bits per word and words held.
    lut_ram : bool or None
        Keep the head in the memory, read asynchronously (``None``: on ECP5,
        when a ``depth x width`` memory goes to LUT RAM there and ``depth`` is
        at least 2); ``False``: ``SyncFIFOBuffered``'s form, ``depth - 1`` words
        in a memory read into an output register (block RAM). Either way the
        storage is marked :data:`STORAGE_ATTRS`.

    Members
    -------
    level : Signal
        Words held (``w_level`` and ``r_level`` are the same).
    """

    def __init__(self, *, width: int, depth: int, lut_ram: bool | None = None):
        super().__init__(width=width, depth=depth)
        self.level = Signal(range(depth + 1))
        self.lut_ram = lut_ram

    def elaborate(self, platform):
        m = Module()
        N = self.depth
        lut_ram = self.lut_ram
        if lut_ram is None:
            lut_ram = is_ecp5(platform) and in_lut_ram(N, self.width)
        m.d.comb += [self.w_level.eq(self.level), self.r_level.eq(self.level)]
        if N < 2:  # one register, no memory
            m.submodules.fifo = f = SyncFIFOBuffered(width=self.width, depth=N)
            m.d.comb += [f.w_data.eq(self.w_data), f.w_en.eq(self.w_en),
                         self.w_rdy.eq(f.w_rdy), self.r_data.eq(f.r_data),
                         self.r_rdy.eq(f.r_rdy), f.r_en.eq(self.r_en), self.level.eq(f.level)]
            return m
        # SyncFIFOBuffered's state: ``inner_level`` words behind the head and the head's
        # valid flag ``r_rdy``. Block RAM: the words behind the head are a memory of
        # ``depth - 1`` read at ``read`` into the head register (the read port's).
        # LUT RAM: every word is in a memory of ``depth``, the head is word ``read``,
        # read asynchronously, and the words behind it follow it.
        inner = N - 1
        words = N if lut_ram else inner
        m.submodules.storage = storage = Memory(shape=self.width, depth=words, init=[],
                                                attrs=STORAGE_ATTRS)
        wp = storage.write_port()
        rp = storage.read_port(domain="comb" if lut_ram else "sync")
        inner_level = Signal(range(inner + 1))
        produce = Signal(range(words))
        read = Signal(range(words))
        do_write = Signal()
        do_inner_read = Signal()
        m.d.comb += [
            self.w_rdy.eq(inner_level != inner),
            do_write.eq(self.w_rdy & self.w_en),
            do_inner_read.eq((inner_level != 0) & (~self.r_rdy | self.r_en)),
            wp.addr.eq(produce), wp.data.eq(self.w_data), wp.en.eq(do_write),
            rp.addr.eq(read), self.r_data.eq(rp.data),
            self.level.eq(inner_level + self.r_rdy),
        ]
        with m.If(do_write):
            m.d.sync += produce.eq(_incr(produce, words))
        if lut_ram:
            with m.If(self.r_rdy & self.r_en):  # the head is taken: the next word is the head
                m.d.sync += read.eq(_incr(read, words))
        else:
            m.d.comb += rp.en.eq(do_inner_read)
            with m.If(do_inner_read):
                m.d.sync += read.eq(_incr(read, words))
        with m.If(do_write & ~do_inner_read):
            m.d.sync += inner_level.eq(inner_level + 1)
        with m.If(do_inner_read & ~do_write):
            m.d.sync += inner_level.eq(inner_level - 1)
        with m.If(do_inner_read):
            m.d.sync += self.r_rdy.eq(1)
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        return m

def _incr(value: Signal, modulo: int) -> Value:
    """``value + 1`` modulo ``modulo``."""
    return Mux(value == modulo - 1, 0, value + 1)
