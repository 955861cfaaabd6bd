"""The overlay engine's sequencer: input beats to weight-memory reads (stages A0, A1)."""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..streams import sparse_layout
from ..util import bits, const_mul

__all__ = ["Sequencer", "row_table"]


def _row_fields(row_start: np.ndarray) -> tuple[int, int]:
    """Bits of a row's start word and of its word count."""
    beats = np.diff(row_start)
    return bits(max(int(row_start[-1]), 2)), max(1, int(beats.max(initial=1)).bit_length())


def row_table(row_start: np.ndarray) -> tuple[int, list[int]]:
    """The row table of overlay rows ``row_start``: word width and one word per input.

    A word is the row's start word, then its word count above it.
    """
    word_bits, beat_bits = _row_fields(row_start)
    return word_bits + beat_bits, [int(s) | (int(b) << word_bits)
                                   for s, b in zip(row_start[:-1], np.diff(row_start))]


class Sequencer(wiring.Component):
    """Input beats to one weight-memory read per entry per op, and the accumulator buffers.

    A0 registers an input beat and reads each entry's row (start word, word
    count) from the row table; A1 steps through the rows' words and the
    passes of each word, one op per cycle: for every entry the weight-memory
    address ``(start + beat) * passes + pass``, kept as a counter so no adder
    or multiplier sits in front of the memory. Ops go to accumulator buffer
    ``buf``; a group's last op hands the buffer to the drain and the next
    group takes the other one once the drain has emptied it.

    Parameters
    ----------
    entries : int
        ``R``: entries per input beat.
    row_start : ndarray of int, shape (fan_in + 1,)
        First word of each input's row; the last element is the word count.
    passes : int
        Passes per word (``L / P``).

    Attributes
    ----------
    table : bool
        The rows are read from a row table (``row_addr``, ``row_data``); else
        every row is one word at its input's index.

    Members
    -------
    i : In(stream.Signature(sparse_layout(R, index_bits)))
        The input beats.
    row_addr : Out(index_bits).array(R), row_en : Out(1), row_data : In(row_bits).array(R)
        The row table's read ports (``table`` only; see :func:`row_table`).
    drain_done, drain_buf : In(1)
        The drain empties buffer ``drain_buf`` this cycle.
    held, held_buf : In(1)
        The drain's last sum of buffer ``held_buf`` is held in its bank's read
        data: no op may go to that buffer.
    issue : Out(1)
        An op: read ``addr`` for every entry.
    addr : Out(range(max(words * passes, 2))).array(R)
    pass_index : Out(bits(passes))
    live : Out(1).array(R)
        Entry ``r``'s row has a word at the op's beat.
    value : Out(signed(value_bits)).array(R)
        The entries' input values.
    buf, group, end : Out(1)
        The op's accumulator buffer; the op completes a group; the group's ``end``.
    """

    def __init__(self, entries: int, row_start: np.ndarray, passes: int, value_bits: int = 8):
        self.entries, self.passes, self.value_bits = entries, passes, value_bits
        self.fan_in = row_start.shape[0] - 1
        self.words = int(row_start[-1])
        beats = np.diff(row_start)
        self.table = not bool(np.all(beats == 1))
        self.word_bits, self.beat_bits = _row_fields(row_start)
        self.in_layout = sparse_layout(entries, bits(self.fan_in), signed(value_bits))
        members = {"i": In(stream.Signature(self.in_layout))}
        if self.table:
            members.update({"row_addr": Out(bits(self.fan_in)).array(entries), "row_en": Out(1),
                            "row_data": In(self.word_bits + self.beat_bits).array(entries)})
        members.update({
            "drain_done": In(1), "drain_buf": In(1), "held": In(1), "held_buf": In(1),
            "issue": Out(1),
            "addr": Out(range(max(self.words * passes, 2))).array(entries),
            "pass_index": Out(bits(passes)),
            "live": Out(1).array(entries),
            "value": Out(signed(value_bits)).array(entries),
            "buf": Out(1), "group": Out(1), "end": Out(1),
        })
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        R, passes = self.entries, self.passes
        word_bits, beat_bits = self.word_bits, self.beat_bits

        # ---------------- A0: input register + row-table read
        a0_valid = Signal()
        a0 = Signal(self.in_layout)
        a1_take = Signal()
        load_a0 = Signal()
        m.d.comb += [
            self.i.ready.eq(~a0_valid | a1_take),
            load_a0.eq(self.i.valid & self.i.ready),
        ]
        with m.If(load_a0):
            m.d.sync += [a0_valid.eq(1), a0.eq(self.i.payload)]
        with m.Elif(a1_take):
            m.d.sync += a0_valid.eq(0)
        if self.table:
            m.d.comb += self.row_en.eq(load_a0)
            for r in range(R):
                m.d.comb += self.row_addr[r].eq(self.i.payload.entries[r].index)

        # Row (start, beats) of each A0 entry, masked by count.
        a0_start = [Signal(word_bits, name=f"a0_start_{r}") for r in range(R)]
        a0_nbeats = [Signal(beat_bits, name=f"a0_nbeats_{r}") for r in range(R)]
        for r in range(R):
            live = Const(r) < a0.count
            if not self.table:
                m.d.comb += [a0_start[r].eq(a0.entries[r].index), a0_nbeats[r].eq(live)]
            else:
                data = self.row_data[r]
                m.d.comb += [a0_start[r].eq(data[:word_bits]),
                             a0_nbeats[r].eq(Mux(live, data[word_bits:], 0))]
        a0_maxb = Signal(beat_bits)
        acc = Const(1, beat_bits)
        for r in range(R):
            acc = Mux(a0_nbeats[r] > acc, a0_nbeats[r], acc)
        m.d.comb += a0_maxb.eq(acc)

        # ---------------- A1: sequencer over (row beat, pass)
        a1_active = Signal()
        waddr = [Signal(range(max(self.words * passes, 2)), name=f"waddr_{r}") for r in range(R)]
        cur_nbeats = [Signal(beat_bits, name=f"cur_nbeats_{r}") for r in range(R)]
        cur_value = [Signal(signed(self.value_bits), name=f"cur_value_{r}", reset_less=True)
                     for r in range(R)]
        cur_maxb = Signal(beat_bits)
        cur_last = Signal()
        cur_end = Signal()
        beat = Signal(beat_bits)
        pss = Signal(bits(passes))

        acc_buf = Signal()  # buffer that new ops accumulate into
        full = Signal(2)  # buffer holds a group not yet drained

        issue = Signal()
        final_op = Signal()  # the last op of the current beat
        m.d.comb += [
            issue.eq(a1_active & ~full.bit_select(acc_buf, 1)
                     & ~(self.held & (self.held_buf == acc_buf))),
            final_op.eq(issue & (beat == cur_maxb - 1) & (pss == passes - 1)),
            a1_take.eq(a0_valid & (~a1_active | final_op)),
        ]
        with m.If(a1_take):
            m.d.sync += [a1_active.eq(1), cur_maxb.eq(a0_maxb), cur_last.eq(a0.last),
                         cur_end.eq(a0.end), beat.eq(0), pss.eq(0)]
            for r in range(R):
                m.d.sync += [waddr[r].eq(const_mul(a0_start[r], passes)),
                             cur_nbeats[r].eq(a0_nbeats[r]),
                             cur_value[r].eq(a0.entries[r].value)]
        with m.Elif(final_op):
            m.d.sync += a1_active.eq(0)
        with m.Elif(issue):
            m.d.sync += [waddr[r].eq(waddr[r] + 1) for r in range(R)]
            with m.If(pss == passes - 1):
                m.d.sync += [pss.eq(0), beat.eq(beat + 1)]
            with m.Else():
                m.d.sync += pss.eq(pss + 1)

        group_op = Signal()  # the op that completes a group
        m.d.comb += group_op.eq(final_op & cur_last)
        full_next = Signal(2)
        m.d.comb += full_next.eq(full)
        with m.If(self.drain_done):
            m.d.comb += full_next.bit_select(self.drain_buf, 1).eq(0)
        with m.If(group_op):
            m.d.comb += full_next.bit_select(acc_buf, 1).eq(1)
            m.d.sync += acc_buf.eq(~acc_buf)
        m.d.sync += full.eq(full_next)

        m.d.comb += [
            self.issue.eq(issue), self.pass_index.eq(pss), self.buf.eq(acc_buf),
            self.group.eq(group_op), self.end.eq(cur_end),
            *(self.addr[r].eq(waddr[r]) for r in range(R)),
            *(self.live[r].eq(beat < cur_nbeats[r]) for r in range(R)),
            *(self.value[r].eq(cur_value[r]) for r in range(R)),
        ]
        return m
