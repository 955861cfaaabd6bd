"""The overlay engine's drain: a complete buffer's sums to the output stream."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..streams import dense_layout
from ..util import bits, replicate
from .common import register

__all__ = ["Drain"]


class Drain(wiring.Component):
    """Reads a complete accumulator buffer, ``P`` lanes per block, into the output stream.

    Groups drain in the order they complete, one buffer after the other; a
    drain may start in the cycle the previous one requests its final block.
    Block ``n`` of a group is bank row ``(n % passes) * K + n // passes``
    (element ``j`` of the block: lane ``(n % passes) * P + j``, kernel id
    ``n // passes``). The drain issues the read (``issue``, ``addr``); stage
    E has the banks' sums and clears the row (``clear``, one copy of its
    controls per ``lanes_per_copy`` lanes); F registers the sums before a
    FIFO (the bank reads, their buffer select and the ``R``-bank sum are one
    path up to F; with ``read_latency`` 2 the banks register their read data
    first, and stage E2 carries the flags of those sums; with 3 they register
    the halves of the sum as well, in stage E3). ``compact``: no F
    and no FIFO, the banks' read data is the output register and the drain
    issues when it is free or taken; a drained buffer's last sum is then held
    in the read data until it is taken (``held``), and no new group may use
    that buffer before.

    Parameters
    ----------
    num_kernels, lanes_per_beat, kernels_per_overlay, passes, acc_bits : int
        ``M``, ``P``, ``K``, ``L / P`` and the sums' width.
    lanes_per_copy : int
        Lanes served by one copy of the clear's controls.
    compact : bool
        No output FIFO.
    read_latency : int
        Cycles from the read to ``sums`` (:attr:`AccumulatorBanks.drain_latency`):
        1, or 2 or 3 (not ``compact``).

    Members
    -------
    group_done, group_buf, group_end : In(1)
        A group of buffer ``group_buf`` is complete (its ``end`` flag:
        ``group_end``): its last write lands by the end of the next cycle,
        before the drain's first read.
    issue, buf : Out(1); addr : Out(range(passes * K))
        The drain's bank read.
    clear, clear_buf : Out(1).array(copies); clear_addr : Out(range(passes * K)).array(copies)
        Stage E: the row read the cycle before, to clear.
    sums : In(signed(acc_bits)).array(P)
        The banks' sums of stage E's row (of E2's with ``read_latency`` 2).
    done : Out(1)
        The drain reads the last block of buffer ``buf``: it is free from the next cycle.
    held, held_buf : Out(1)
        ``compact``: the last sum of buffer ``held_buf`` is not yet taken.
    o : Out(stream.Signature(dense_layout(P, signed(acc_bits))))
        Per group, the ``M`` sums; ``last``/``end`` follow the input group's.
    """

    def __init__(self, num_kernels: int, lanes_per_beat: int, kernels_per_overlay: int,
                 passes: int, acc_bits: int, *, lanes_per_copy: int, compact: bool,
                 read_latency: int = 1):
        if read_latency not in (1, 2, 3) or (compact and read_latency != 1):
            raise ValueError(f"read_latency must be 1, or 2 or 3 without compact, got "
                             f"{read_latency!r}")
        self.read_latency = read_latency
        self.num_kernels, self.lanes_per_beat = num_kernels, lanes_per_beat
        self.kernels_per_overlay, self.passes, self.acc_bits = kernels_per_overlay, passes, acc_bits
        self.lanes_per_copy, self.compact = lanes_per_copy, compact
        self.copies = c = -(-lanes_per_beat // lanes_per_copy)
        rows = range(passes * kernels_per_overlay)
        super().__init__({
            "group_done": In(1), "group_buf": In(1), "group_end": In(1),
            "issue": Out(1), "buf": Out(1), "addr": Out(rows),
            "clear": Out(1).array(c), "clear_buf": Out(1).array(c),
            "clear_addr": Out(rows).array(c),
            "sums": In(signed(acc_bits)).array(lanes_per_beat),
            "done": Out(1), "held": Out(1), "held_buf": Out(1),
            "o": Out(stream.Signature(dense_layout(lanes_per_beat, signed(acc_bits)))),
        })

    def elaborate(self, platform):
        m = Module()
        P, A, K, passes = self.lanes_per_beat, self.acc_bits, self.kernels_per_overlay, self.passes
        copies = self.copies
        pending = Signal(2)  # groups complete in a buffer, waiting for the drain
        pending_end = Signal(2)
        n_blocks = -(-self.num_kernels // P)
        d_active = Signal()
        d_buf = Signal()
        d_end = Signal()
        d_block = Signal(range(max(n_blocks, 2)))
        d_id = Signal(range(max(K, 2)))
        d_pass = Signal(bits(passes))
        d_addr = Signal(range(passes * K))  # d_pass * K + d_id, stepped with them
        d_next = Signal()  # the buffer the next drain reads (groups drain in order)

        d_issue = Signal()
        d_final = Signal()
        e_valid = Signal()
        e_last = Signal()
        e_buf = Signal()
        if self.compact:
            # The bank's read data is the output register: issue when it is free or taken.
            m.d.comb += [
                d_issue.eq(d_active & (~e_valid | self.o.ready)),
                # A drained buffer's last sum is held in its bank's read data until it is
                # taken: no new group may read that bank before.
                self.held.eq(e_valid & e_last & ~self.o.ready),
            ]
        else:
            # (a place per stage in flight, so the credits do not throttle a drain
            # whose reader takes a sum every cycle)
            fifo = SyncFIFOBuffered(width=P * A + 2, depth=4 + self.read_latency)
            m.submodules.fifo = fifo
            # Credits: the FIFO's free places less the sums in flight (read from the
            # banks (E), in their registers (E2), summed into F). A register says whether
            # one is left, so the banks' read enable is a function of two registers (the
            # FIFO's level and an adder behind it ran to every bank's clock enable).
            credits = Signal(range(fifo.depth + 1), init=fifo.depth)
            has_credit = Signal(init=1)
            credits_next = Signal.like(credits)
            m.d.comb += [credits_next.eq(credits - d_issue + (fifo.r_rdy & self.o.ready)),
                         d_issue.eq(d_active & has_credit)]
            m.d.sync += [credits.eq(credits_next), has_credit.eq(credits_next != 0)]
        m.d.comb += d_final.eq(d_issue & (d_block == n_blocks - 1))
        start = Signal()
        m.d.comb += start.eq((~d_active | d_final) & pending.bit_select(d_next, 1))
        pend_next = Signal(2)
        m.d.comb += pend_next.eq(pending)
        with m.If(self.group_done):
            m.d.comb += pend_next.bit_select(self.group_buf, 1).eq(1)
            m.d.sync += pending_end.bit_select(self.group_buf, 1).eq(self.group_end)
        with m.If(start):
            m.d.comb += pend_next.bit_select(d_next, 1).eq(0)
            m.d.sync += [d_active.eq(1), d_buf.eq(d_next),
                         d_end.eq(pending_end.bit_select(d_next, 1)),
                         d_block.eq(0), d_id.eq(0), d_pass.eq(0), d_addr.eq(0),
                         d_next.eq(~d_next)]
        m.d.sync += pending.eq(pend_next)
        with m.If(d_final & ~start):
            m.d.sync += d_active.eq(0)
        with m.Elif(d_issue & ~d_final):
            m.d.sync += d_block.eq(d_block + 1)
            with m.If(d_pass == passes - 1):
                m.d.sync += [d_pass.eq(0), d_id.eq(d_id + 1), d_addr.eq(d_id + 1)]
            with m.Else():
                m.d.sync += [d_pass.eq(d_pass + 1), d_addr.eq(d_addr + K)]
        e_end = Signal()
        # Stage E, per group of lanes: the bank address read, and a clear of that row
        # the cycle after the read.
        re_clear = replicate(m, "e_clear", d_issue, copies)
        re_addr = replicate(m, "e_addr", d_addr, copies, en=d_issue)
        re_buf = replicate(m, "e_buf", d_buf, copies, en=d_issue)
        with m.If(d_issue):
            m.d.sync += [e_valid.eq(1), e_last.eq(d_final), e_end.eq(d_final & d_end),
                         e_buf.eq(d_buf)]
        with m.Elif(self.o.ready | ~Const(self.compact)):  # the FIFO takes every sum
            m.d.sync += e_valid.eq(0)
        m.d.comb += [self.issue.eq(d_issue), self.buf.eq(d_buf), self.addr.eq(d_addr),
                     self.done.eq(d_final), self.held_buf.eq(e_buf),
                     *(self.clear[g].eq(re_clear[g]) for g in range(copies)),
                     *(self.clear_buf[g].eq(re_buf[g]) for g in range(copies)),
                     *(self.clear_addr[g].eq(re_addr[g]) for g in range(copies))]

        if self.compact:
            sums = Cat(*self.sums, e_last, e_end)
            m.d.comb += [self.o.valid.eq(e_valid), self.o.payload.as_value().eq(sums)]
        else:
            # E2 (read latency 2): the banks' read data in their registers; E3 (3): the
            # halves of their sums.
            s_valid, s_last, s_end = e_valid, e_last, e_end
            for stage in range(2, self.read_latency + 1):
                s_valid, s_last, s_end = (register(m, f"e{stage}_{n}", v) for n, v in
                                          (("valid", s_valid), ("last", s_last), ("end", s_end)))
            # F: the drain's sums registered before the FIFO.
            f_valid = Signal()
            f_data = Signal(P * A + 2, reset_less=True)
            m.d.sync += [f_valid.eq(s_valid), f_data.eq(Cat(*self.sums, s_last, s_end))]
            m.d.comb += [
                fifo.w_data.eq(f_data),
                fifo.w_en.eq(f_valid),
                self.o.valid.eq(fifo.r_rdy),
                fifo.r_en.eq(self.o.ready),
                self.o.payload.as_value().eq(fifo.r_data),
            ]
        return m
