"""The overlay engine's accumulator banks: two buffers of ``R x P`` banks."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .common import register, select

__all__ = ["AccumulatorBanks"]


class AccumulatorBanks(wiring.Component):
    """Accumulators ``[buffer][entry r][lane k][row]``, one bank per (buffer, r, k).

    The products of entry ``r`` in lane ``k`` add into bank ``(r, k)`` of the
    buffer under accumulation: the entries of one beat never collide on an
    accumulator. The other buffer serves the drain, which reads each row,
    sums the ``R`` banks of a lane (``sums``) and clears the row the cycle
    after the read, leaving the buffer clear for reuse. The two never name
    the same buffer: a buffer is drained only once its group is complete.

    A bank is a memory with one synchronous read port and one write port (one
    simple dual-port RAM); the read port is the accumulation's when it reads,
    else the drain's. A word is the sum and a valid bit: the clear writes
    the valid bit only, and a word not valid reads as 0. The two buffers of
    a bank share one adder. A write in the cycle of the read of the same row
    (back-to-back hits on one accumulator, a clear just before) is forwarded
    to the adder, or, with ``read_register``, the read data is registered
    before the add (stage C2: two ops on one accumulator are at least three
    cycles apart, so no bypass is needed, and the block RAM's clock-to-out
    is not in the read-add-write loop). Banks of
    a few rows are registers instead (``registers``): a write adds into the
    row it names, with no read port; a 16-row LUT RAM would waste most of its
    rows.

    Parameters
    ----------
    entries, lanes_per_beat : int
        ``R`` and ``P``.
    rows : int
        Rows per bank (``passes * K``).
    acc_bits : int
        Accumulator width.
    lanes_per_copy : int
        Lanes served by one copy of the per-lane-group controls.
    registers : bool
        The banks are registers.
    read_register : bool
        The read data is registered before the add (memory banks).
    compact : bool
        Area first: an adder per buffer, zeros written back, transparent read
        ports (memory banks; see ``_compact_bank``).

    Members
    -------
    read_valid, read_buf : In(1).array(copies); read_addr : In(range(rows)).array(R, P)
        The accumulation's read of row ``read_addr`` in buffer ``read_buf``
        (memory banks), the cycle before its write (two with ``read_register``):
        ``write_addr`` is ``read_addr`` that many cycles later.
    write_live : In(1).array(R, copies); write_buf : In(1).array(copies)
    write_addr : In(range(rows)).array(R, P); prod : In(signed(prod_bits)).array(R, P)
        The accumulation's write: ``prod`` added into row ``write_addr``.
    drain_en, drain_buf : In(1); drain_addr : In(range(rows))
        The drain's read (memory banks).
    clear, clear_buf : In(1).array(copies); clear_addr : In(range(rows)).array(copies)
        The row the drain read the cycle before, written with zero; the
        register banks' drain read.
    sums : Out(signed(acc_bits)).array(P)
        Per lane, the sum over the ``R`` banks of row ``clear_addr`` of buffer
        ``clear_buf`` (memory banks: of the drain's read the cycle before, and
        one cycle later than the clear unless ``compact``, two with
        :attr:`split_sum`: see :attr:`drain_latency`).
    """

    def __init__(self, entries: int, lanes_per_beat: int, rows: int, acc_bits: int, *,
                 lanes_per_copy: int, registers: bool, read_register: bool, prod_bits: int = 16,
                 compact: bool = False):
        self.entries, self.lanes_per_beat, self.rows = entries, lanes_per_beat, rows
        self.prod_bits = prod_bits
        self.acc_bits, self.lanes_per_copy = acc_bits, lanes_per_copy
        self.copies = -(-lanes_per_beat // lanes_per_copy)
        self.registers, self.read_register = registers, read_register
        self.compact = compact
        #: Cycles from the drain's read to its ``sums``: memory banks (not compact)
        #: register the read data before the buffer select and the R-bank sum, so
        #: the block RAM's clock-to-out (ECP5: 5.8 ns) ends at a register beside it.
        #: With four banks or more a lane's sum is two halves, each registered (E3),
        #: then their sum: one more cycle.
        self.split_sum = not (registers or compact) and entries >= 4
        self.drain_latency = 1 if registers or compact else 2 + self.split_sum
        R, P, c = entries, lanes_per_beat, self.copies
        super().__init__({
            "read_valid": In(1).array(c), "read_buf": In(1).array(c),
            "read_addr": In(range(rows)).array(R, P),
            "write_live": In(1).array(R, c), "write_buf": In(1).array(c),
            "write_addr": In(range(rows)).array(R, P),
            "prod": In(signed(prod_bits)).array(R, P),
            "drain_en": In(1), "drain_buf": In(1), "drain_addr": In(range(rows)),
            "clear": In(1).array(c), "clear_buf": In(1).array(c),
            "clear_addr": In(range(rows)).array(c),
            "sums": Out(signed(acc_bits)).array(P),
        })

    def elaborate(self, platform):
        m = Module()
        R, P, A, G = self.entries, self.lanes_per_beat, self.acc_bits, self.lanes_per_copy
        shallow, split = self.registers, self.read_register
        # A memory bank's word: the sum and a valid bit (compact: the sum alone)
        word = signed(A) if self.compact else unsigned(A + 1)
        self._read_regs = {}  # (r, k, buffer) -> the registered read data
        banks = []  # banks[r][k][buffer]: (write port, read port), or the rows (registers)
        for r in range(R):
            row = []
            for k in range(P):
                pair = []
                for b in range(2):
                    if shallow:
                        pair.append([Signal(signed(A), name=f"acc_{r}_{k}_{b}_{j}",
                                            reset_less=True) for j in range(self.rows)])
                        continue
                    mem = Memory(shape=word, depth=self.rows, init=[])
                    m.submodules[f"acc_{r}_{k}_{b}"] = mem
                    wp = mem.write_port()
                    pair.append((wp, mem.read_port(
                        transparent_for=(wp,) if self.compact and not split else ())))
                row.append(pair)
            banks.append(row)

        for r in range(R):
            for k in range(P):
                g = k // G
                if shallow:
                    live, cbuf = self.write_live[r][g], self.write_buf[g]
                    clear, ebuf, eaddr = self.clear[g], self.clear_buf[g], self.clear_addr[g]
                    prod, addr = self.prod[r][k], self.write_addr[r][k]
                    for b in range(2):
                        rows = banks[r][k][b]
                        total = Signal(signed(A), name=f"c_sum_{r}_{k}_{b}")
                        m.d.comb += total.eq(select(rows, addr) + prod)
                        with m.If(live & (cbuf == b)):
                            for j, acc_row in enumerate(rows):
                                with m.If(addr == j):
                                    m.d.sync += acc_row.eq(total)
                        with m.Elif(clear & (ebuf == b)):
                            for j, acc_row in enumerate(rows):
                                with m.If(eaddr == j):
                                    m.d.sync += acc_row.eq(0)
                    continue
                if self.compact:
                    self._compact_bank(m, banks[r][k], r, k, g)
                else:
                    self._memory_bank(m, banks[r][k], r, k, g)
        # The buffer select of the registered drain reads: clear_buf a cycle later.
        drain_buf = [register(m, f"d2_buf_{g}", self.clear_buf[g])
                     if self.drain_latency >= 2 else self.clear_buf[g]
                     for g in range(self.copies)]
        for k in range(P):
            parts = [self._drained(banks[r][k], r, k, k // G, drain_buf[k // G])
                     for r in range(R)]
            if self.split_sum:  # (A bits each: the sum is exact modulo 2**A, as the total)
                halves = [Signal(signed(A), name=f"e3_half_{k}_{h}", reset_less=True)
                          for h in range(2)]
                m.d.sync += [halves[0].eq(sum(parts[:R // 2], Const(0, signed(A)))),
                             halves[1].eq(sum(parts[R // 2:], Const(0, signed(A))))]
                total = halves[0] + halves[1]
            else:
                total = sum(parts, Const(0, signed(A)))
            s = Signal(signed(A), name=f"drain_sum_{k}")
            m.d.comb += [s.eq(total), self.sums[k].eq(s)]
        return m

    def _memory_bank(self, m: Module, pair, r: int, k: int, g: int) -> None:
        """Bank ``(r, k)`` in memory: one adder for both buffers, the drain's clear
        a write of the valid bit (the sum bits are don't-cares), no zero multiplexer.

        Without ``read_register``, a write in the cycle of the read (the previous
        accumulation of the same row, or the drain's clear of it) is forwarded
        here, as a transparent read port would, but once for both buffers and in
        the same multiplexer as the valid bit's.
        """
        A = self.acc_bits
        live, cbuf = self.write_live[r][g], self.write_buf[g]
        clear, ebuf, eaddr = self.clear[g], self.clear_buf[g], self.clear_addr[g]
        prod, addr = self.prod[r][k], self.write_addr[r][k]
        total = Signal(signed(A), name=f"c_sum_{r}_{k}")
        olds, wes = [], []
        for b, (wp, rp) in enumerate(pair):
            old = self._bank_read(m, rp, r, k, g, b)
            acc = Signal(name=f"c_acc_{r}_{k}_{b}")
            m.d.comb += acc.eq(live & (cbuf == b))
            m.d.comb += [wp.addr.eq(Mux(acc, addr, eaddr)), wp.data.eq(Cat(total, acc)),
                         wp.en.eq(acc | (clear & (ebuf == b)))]
            olds.append(old)
            wes.append((wp.en, wp.addr, acc))
        cur = Mux(cbuf, olds[1], olds[0])
        value = Mux(cur[A], cur[:A].as_signed(), 0)
        if not self.read_register:
            # Forwarding: a write to the accumulated row in the cycle of its read, which
            # the read data does not see. The write's row is the read's a cycle later
            # (``write_addr`` is ``read_addr`` registered), so the hit is found in the
            # cycle of the read and registered: no comparator before the add.
            hit, valid = Signal(name=f"c_hit_{r}_{k}"), Signal(name=f"c_hit_valid_{r}_{k}")
            last_total = register(m, f"c_last_{r}_{k}", total, reset_less=True)
            hits = []
            for b, (we, waddr, acc) in enumerate(wes):
                p_hit = register(m, f"c_hit_{r}_{k}_{b}",
                                 we & (waddr == self.read_addr[r][k]))
                p_acc = register(m, f"c_wacc_{r}_{k}_{b}", acc)
                hits.append((p_hit, p_acc))
            m.d.comb += [hit.eq(Mux(cbuf, hits[1][0], hits[0][0])),
                         valid.eq(Mux(cbuf, hits[1][1], hits[0][1]))]
            value = Mux(hit, Mux(valid, last_total, 0), value)
        m.d.comb += total.eq(value + prod)

    def _bank_read(self, m: Module, rp, r: int, k: int, g: int, b: int) -> Value:
        """Buffer ``b``'s read port of bank ``(r, k)``: the accumulation's read when it
        reads that buffer, else the drain's; its data as the add sees it (stage C2's
        register with ``read_register``)."""
        with m.If(self.read_valid[g] & (self.read_buf[g] == b)):
            m.d.comb += [rp.addr.eq(self.read_addr[r][k]), rp.en.eq(1)]
        with m.Else():
            m.d.comb += [rp.addr.eq(self.drain_addr),
                         rp.en.eq(self.drain_en & (self.drain_buf == b))]
        if self.read_register:  # C2: the read data registered (the drain's too)
            self._read_regs[r, k, b] = register(m, f"c2_old_{r}_{k}_{b}", rp.data,
                                                reset_less=True)
            return self._read_regs[r, k, b]
        if self.drain_latency >= 2:
            self._read_regs[r, k, b] = register(m, f"d2_old_{r}_{k}_{b}", rp.data,
                                                reset_less=True)
        return rp.data

    def _compact_bank(self, m: Module, pair, r: int, k: int, g: int) -> None:
        """Bank ``(r, k)`` in memory, area first: an adder per buffer, the clear a
        write of zero, the read port transparent to the write port. Fewer
        flip-flops than :meth:`_memory_bank` (on iCE40, whose block RAMs hold
        the banks, the valid bits and the forwarded write cost 139 logic cells
        more on the digits network's iCEBreaker build)."""
        live, cbuf = self.write_live[r][g], self.write_buf[g]
        clear, ebuf, eaddr = self.clear[g], self.clear_buf[g], self.clear_addr[g]
        prod, addr = self.prod[r][k], self.write_addr[r][k]
        for b, (wp, rp) in enumerate(pair):
            old = self._bank_read(m, rp, r, k, g, b)
            with m.If(live & (cbuf == b)):
                m.d.comb += [wp.addr.eq(addr), wp.data.eq(old + prod), wp.en.eq(1)]
            with m.Elif(clear & (ebuf == b)):
                m.d.comb += [wp.addr.eq(eaddr), wp.data.eq(0), wp.en.eq(1)]

    def _drained(self, pair, r: int, k: int, g: int, buf: Value) -> Value:
        """The drain's read of bank ``(r, k)`` (buffer ``buf``): its sum, or 0
        (memory banks, not compact: from the registered read data, E2)."""
        A = self.acc_bits
        if self.registers:
            return Mux(buf, select(pair[1], self.clear_addr[g]),
                       select(pair[0], self.clear_addr[g]))
        if self.compact:
            return Mux(buf, pair[1][1].data, pair[0][1].data)
        cur = Mux(buf, self._read_regs[r, k, 1], self._read_regs[r, k, 0])
        return Mux(cur[A], cur[:A].as_signed(), 0)
