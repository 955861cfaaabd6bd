"""The overlay engine: Complementary Sparsity matrix-vector product in hardware.

For every active input ``(index, value)`` of a group the engine reads the
words of overlay row ``index`` (each word: one slot per lane, a slot holds a
weight and a kernel id), multiplies each slot's weight by ``value``
(*Multiply*), and adds the product to accumulator ``[lane][kernel id]``
(*Route*, *Sum*). At the end of the group it emits the ``M`` sums.

Structure
---------
::

    i (sparse, R entries/beat)
      -> A0: input register, row-table read (start word, beats) per entry
      -> A1: sequencer: for each beat b of the rows, each pass p of the lanes,
             one weight-memory read per entry (R read ports, P slots each)
      -> W : weight words out of the memories -> registered
      -> B : P x R products (int8 x int8), accumulator-bank read
      -> C : read-modify-write of accumulator [lane][id] (banks per entry r
             and slot k, one memory per buffer)
    drain: per block of P lanes, sum the R banks -> registered -> FIFO -> o (dense, P/beat);
           ``compact``: no FIFO, the banks' read data is the output register

* ``R`` (``entries``) active inputs per beat, each with its own weight-memory
  read port and its own accumulator banks, so entries of one beat never
  collide on an accumulator; the drain adds the ``R`` banks.
* ``P`` (``lanes_per_beat``) lanes per pass; ``L / P`` passes per word
  (``P`` must divide ``L``). ``R * P`` multipliers in all.
* Two accumulator buffers, each bank a separate memory with one synchronous
  read port (transparent to its write port: back-to-back hits on one
  accumulator see the sum just written, with no stall) and one write port,
  so every bank maps to one simple dual-port RAM. While one buffer
  accumulates a group, the other is drained: the drain reads each
  accumulator and writes zero back, leaving the buffer clear for reuse.
  Banks of at most ``SMALL_BANK_ROWS`` rows (``L / P * K``; gsc-cs conv1: 2)
  are registers instead (engines with a FIFO): stage C adds into the row it
  names, with no read port; a 16-row LUT RAM would hold two of its rows, and
  conv1's 192 banks filled 96% of an ECP5-85F's RAM-capable slices.
* The registers every lane reads (the entries' values, the pass, the buffer
  selects and live flags of stages B and C, the drain's address) have a copy
  per ``LANES_PER_COPY`` lanes, so no one register drives a whole engine
  spread over the die's DSP rows. An entry's value is copied from stage W
  on, so each copy chain ends at ``LANES_PER_COPY`` multipliers.
* Elaborated for an ECP5 platform, each product is one ``MULT18X18D`` whose
  own input and output registers are stage B's operand registers and the
  product register (:func:`~cosparse.hw.util.registered_product`): the
  same cycles, with the routes into and out of the DSP block register to
  register. Weight memories deeper than ``DSP_DIRECT_WEIGHT_WORDS`` keep
  their fabric register behind the block RAMs' output multiplexer, and it
  feeds the DSP block's input register A as a stage of its own (D), the
  value a cycle later to match: no block mixes a registered and an
  unregistered input, which nextpnr would time as all-combinational. The
  product is then C2's (where there is a C2, below), or stage C comes a
  cycle later: one more cycle of latency.
* Weight memories deeper than ``WEIGHT_BANK_WORDS`` are banks, each bank's
  read data registered before the bank multiplexer (stage W2).
* With three passes or more (not ``compact``), the accumulator banks' read data is registered
  before the add (stage C2): two ops on one accumulator are ``passes`` cycles
  apart, so no bypass is needed.

Output order
------------
Element ``n`` of the output group is accumulator ``(lane n % L, id n // L)``;
the packer fills exactly the slots with ``n < M``, so a group is ``M``
elements, ``P`` per beat (the last beat zero-padded). The compiler numbers
each layer's channels in this order (``kernel_map[l, j] == j * L + l``), which
makes the stream order the channel order.

Throughput
----------
One input beat per ``max(1, b) * L / P`` cycles, ``b`` the largest row beat
count among its entries (1 for complementary masks): no bubbles between
beats or groups in steady state. Cycles per group are therefore
``ceil(active / R) * L / P`` for complementary masks; the drain of a group
takes ``ceil(M / P)`` cycles and overlaps the next group, so a group takes
``max(ceil(active / R) * L / P, ceil(M / P))`` cycles in steady state
(measured in ``tests/hw/test_overlay.py``). Latency from the acceptance of a
group's last input beat to its first output beat: ``9 + b * L / P`` cycles
(``compact``: ``6 + b * L / P``), one more with banked weights (W2), one
more with three passes or more on bank memories (C2; not ``compact``) and,
on ECP5, one more with a weight memory deeper than
``DSP_DIRECT_WEIGHT_WORDS`` and no C2 (D).
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from cosparse.compiler.ir import Overlays

from .util import bits, const_mul, is_ecp5, registered_product, replicate
from .hostlink import LoadPort
from .streams import dense_layout, sparse_layout

__all__ = ["OverlayEngine"]




def _has_spram(platform) -> bool:
    """The platform is an iCE40 UltraPlus (SB_SPRAM256KA blocks)."""
    return str(getattr(platform, "device", "")).startswith("iCE40UP")


class _SpramPort:
    """Read-port-like signals (``addr``, ``en``, ``data``) of an SPRAM-backed memory."""

    def __init__(self, width: int, depth: int):
        self.addr = Signal(range(max(depth, 2)), name="spram_addr")
        self.en = Signal(name="spram_en")
        self.data = Signal(width, name="spram_data")


def _spram_port(m: Module, width: int, depth: int, load) -> _SpramPort:
    """A ``width`` x ``depth`` single-port memory of iCE40 ``SB_SPRAM256KA`` blocks.

    Reads and the loader's writes share the address (see ``OverlayEngine``);
    the blocks are selected only on a read or a write, so the data output
    holds between reads like a read port's.
    """
    from amaranth.hdl import ClockSignal, Instance

    if depth > 16384:
        raise ValueError(f"an SPRAM weight memory holds at most 16384 words, got {depth}")
    port = _SpramPort(width, depth)
    for c in range(-(-width // 16)):
        lo, hi = 16 * c, min(16 * c + 16, width)
        dout = Signal(16, name=f"spram{c}_dout")
        m.submodules[f"spram{c}"] = Instance(
            "SB_SPRAM256KA",
            i_ADDRESS=port.addr,
            i_DATAIN=load.data[lo:hi], i_MASKWREN=Const(0b1111, 4), i_WREN=load.en,
            i_CHIPSELECT=port.en | load.en, i_CLOCK=ClockSignal(), i_STANDBY=Const(0),
            i_SLEEP=Const(0), i_POWEROFF=Const(1), o_DATAOUT=dout)
        m.d.comb += port.data[lo:hi].eq(dout[:hi - lo])
    return port


#: Accumulator banks of at most this many rows are registers (engines with an
#: output FIFO).
SMALL_BANK_ROWS = 4

#: ECP5: weight memories of at most this many words (one DP16KD deep) feed the DSP
#: blocks' input registers directly; deeper ones are several blocks behind an output
#: multiplexer, which keeps its fabric register (gsc-cs fc1: 48,000 words, a 5-level
#: multiplexer, 17.4 ns from block RAM to DSP input without it).
DSP_DIRECT_WEIGHT_WORDS = 512

#: Weight memories deeper than this many words are split into banks of this depth
#: (2048: one DP16KD column of 9-bit words), each bank's read data registered beside
#: its block RAMs, then the bank multiplexer: one cycle more latency, no slower rate.
#: Without it the block RAM's clock-to-out (ECP5: 5.8 ns), the route out of the RAM
#: column and the multiplexer tree over the blocks are one path (gsc-cs fc1: 48,000
#: words, 17.4 ns, the routed whole build's critical path).
WEIGHT_BANK_WORDS = 2048

#: Lanes served by one copy of each register that all lanes read (see
#: :func:`~cosparse.hw.util.replicate`).
LANES_PER_COPY = 4


def _register(m: Module, name: str, value: Value, *, reset_less: bool = False) -> Signal:
    """``value``, registered every cycle."""
    value = Value.cast(value)
    reg = Signal(value.shape(), name=name, reset_less=reset_less)
    m.d.sync += reg.eq(value)
    return reg


def _select(rows: list[Signal], index: Value) -> Value:
    """``rows[index]`` (a mux; no array proxy for a single row)."""
    return rows[0] if len(rows) == 1 else Array(rows)[index]


class OverlayEngine(wiring.Component):
    """Complementary-sparse matrix-vector engine over packed overlays.

    Parameters
    ----------
    overlays : Overlays
        The packed layer (weights, kernel ids, row starts); the memories are
        initialised from it.
    entries : int
        ``R``: active inputs accepted per beat (weight-memory read ports).
    lanes_per_beat : int, optional
        ``P``: lanes multiplied per cycle; must divide ``L`` (default ``L``).
    acc_bits : int, optional
        Accumulator width; default and minimum: the width that provably holds
        every sum of this layer.
    loadable : bool
        The weights (and row table) in memories the host loader writes.
    spram : bool
        The weights in iCE40 SPRAM (single port, no initial contents).
    compact : bool
        No output FIFO (the smallest parts): the drain's sums come straight
        from the accumulator banks, whose read data holds while the output
        waits (a new group into that buffer waits until its last sum is
        taken). The drain issues on ``o.ready``; same rate, two cycles less
        latency. On iCE40, which has no LUT RAM, the FIFO is about 90 logic
        cells.

    Members
    -------
    i : In(stream.Signature(sparse_layout(R, index_bits)))
        Groups of active inputs (index = fan-in position).
    o : Out(stream.Signature(dense_layout(P, signed(acc_bits))))
        Per group, the ``M`` sums in drain order; ``last``/``end`` follow the
        input group's.

    Raises
    ------
    ValueError
        A parameter is out of range, or the overlays' used slots are not a
        prefix of the drain order.
    """

    def __init__(self, overlays: Overlays, *, entries: int = 1, lanes_per_beat: int | None = None,
                 acc_bits: int | None = None, loadable: bool = False, spram: bool = False,
                 compact: bool = False):
        if not isinstance(overlays, Overlays):
            raise ValueError(f"overlays must be an Overlays, got {type(overlays).__name__}")
        lanes, k = overlays.lanes, overlays.kernels_per_overlay
        if not isinstance(entries, int) or not 1 <= entries <= 64:
            raise ValueError(f"entries (R) must be an integer from 1 to 64, got {entries!r}")
        p = lanes if lanes_per_beat is None else lanes_per_beat
        if not isinstance(p, int) or p < 1 or lanes % p:
            raise ValueError(f"lanes_per_beat (P) must divide the {lanes} lanes, got {p!r}")
        used = overlays.kernel_map >= 0
        order = np.arange(k)[None, :] * lanes + np.arange(lanes)[:, None]
        if not np.array_equal(used, order < overlays.num_kernels):
            raise ValueError("the used slots (lane l, id j) must be exactly those with "
                             "j * L + l < M; pack the layer with cosparse.compiler.packer.pack")
        worst = overlays.worst_case_sum()
        need = max(worst.bit_length() + 1, 2)
        acc_bits = need if acc_bits is None else acc_bits
        if not isinstance(acc_bits, int) or not need <= acc_bits <= 48:
            raise ValueError(f"acc_bits must be an integer from {need} (this layer's worst case "
                             f"{worst}) to 48, got {acc_bits!r}")
        self.overlays = overlays
        self.entries, self.lanes_per_beat, self.acc_bits = entries, p, acc_bits
        self.passes = lanes // p
        self.index_bits = bits(overlays.fan_in)
        self.in_layout = sparse_layout(entries, self.index_bits)
        self.out_layout = dense_layout(p, signed(acc_bits))
        if spram and (not loadable or entries != 1):
            raise ValueError("spram (a single-port weight memory without initial contents) "
                             "needs loadable=True and entries (R) = 1")
        self.spram = spram
        if not isinstance(compact, bool):
            raise ValueError(f"compact must be True or False, got {compact!r}")
        self.compact = compact
        # Host loader access: the weights, and the row table of non-complementary masks.
        self.load_ports: list[LoadPort] = []
        self._wload = self._rload = None
        if loadable:
            id_bits = bits(k)
            self._wload = LoadPort("weights", p * (8 + id_bits),
                                   max(overlays.words * self.passes, 1),
                                   tuple(self._weight_image(id_bits)), has_init=not spram)
            self.load_ports.append(self._wload)
            if not self._identity:
                self._rload = LoadPort("rows", *self._row_shape(), tuple(self._row_image()))
                self.load_ports.append(self._rload)
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    # ------------------------------------------------------------------
    @property
    def multipliers(self) -> int:
        return self.entries * self.lanes_per_beat

    @property
    def dsps(self) -> int:
        """DSP multipliers: the ``R * P`` products."""
        return self.multipliers

    def cycles_per_beat(self, row_beats: int = 1) -> int:
        """Cycles one input beat takes when its largest row has ``row_beats`` words."""
        return max(1, row_beats) * self.passes

    def _weight_image(self, id_bits: int) -> list[int]:
        ov, p = self.overlays, self.lanes_per_beat
        slot_bits = 8 + id_bits
        w = (ov.weights.astype(np.int64) & 0xFF) | (ov.kernel_ids.astype(np.int64) << 8)
        w = w.reshape(ov.words, self.passes, p)  # word, pass, slot
        shifts = np.arange(p, dtype=object) * slot_bits
        return [int(sum(int(v) << int(s) for v, s in zip(row, shifts)))
                for row in w.reshape(-1, p)] or [0]

    @property
    def _identity(self) -> bool:
        """Every input's row is one word at its own index (complementary packing)."""
        return bool(np.all(self.overlays.beats == 1))

    def _row_shape(self) -> tuple[int, int]:
        ov = self.overlays
        word_bits = bits(max(ov.words, 2))
        beat_bits = max(1, int(ov.beats.max(initial=1)).bit_length())
        return word_bits + beat_bits, ov.fan_in

    def _row_image(self) -> list[int]:
        ov = self.overlays
        word_bits = bits(max(ov.words, 2))
        return [int(s) | (int(b) << word_bits) for s, b in zip(ov.row_start[:-1], ov.beats)]

    def _weight_banks(self, m: Module, depth: int, width: int, init, waddr: list[Signal],
                      issue: Value) -> list[Value]:
        """Weight memory of ``depth`` words as banks of ``WEIGHT_BANK_WORDS``.

        Every bank is read at each entry's low address bits; its read data is
        registered (placed beside the bank's block RAMs), and the entry's bank,
        registered along, selects among them. Returns each entry's word, two
        cycles after ``issue`` (one for a single memory).
        """
        lo = exact_log2(WEIGHT_BANK_WORDS)
        n = -(-depth // WEIGHT_BANK_WORDS)
        wload = self._wload
        q = [[] for _ in waddr]  # q[r][bank]: the bank's registered read data
        for b in range(n):
            part = init[b * WEIGHT_BANK_WORDS:(b + 1) * WEIGHT_BANK_WORDS]
            mem = Memory(shape=unsigned(width), depth=min(WEIGHT_BANK_WORDS,
                                                          depth - b * WEIGHT_BANK_WORDS),
                         init=part)
            m.submodules[f"weights_{b}"] = mem
            for r, addr in enumerate(waddr):
                rp = mem.read_port()
                m.d.comb += [rp.addr.eq(addr[:lo]), rp.en.eq(issue)]
                q[r].append(_register(m, f"wbank_{b}_{r}", rp.data, reset_less=True))
            if wload is not None:
                wp = mem.write_port()
                m.d.comb += [wp.addr.eq(wload.addr[:lo]), wp.data.eq(wload.data),
                             wp.en.eq(wload.en & (wload.addr[lo:] == b))]
        out = []
        for r, addr in enumerate(waddr):
            sel = _register(m, f"wbank_sel_{r}", _register(m, f"w_bank_{r}", addr[lo:]))
            out.append(Array(q[r])[sel])
        return out

    def elaborate(self, platform):
        m = Module()
        ov = self.overlays
        R, P, A = self.entries, self.lanes_per_beat, self.acc_bits
        passes, K, M = self.passes, ov.kernels_per_overlay, ov.num_kernels
        id_bits = bits(K)
        slot_bits = 8 + id_bits
        words = ov.words
        beats = ov.beats
        identity = bool(np.all(beats == 1))
        max_beats = int(beats.max(initial=1))
        word_bits = bits(max(words, 2))
        beat_bits = max(1, max_beats.bit_length())
        bank_depth = passes * K  # (pass, id), one memory per buffer
        pass_bits = bits(passes)

        # ---------------- memories
        wload = self._wload
        wdepth = max(words * passes, 1)
        wbits = P * slot_bits
        banked = False
        if self.spram and _has_spram(platform):
            wports = [_spram_port(m, wbits, wdepth, wload)]
        else:
            hw_depth = wload.hw_depth if wload else wdepth
            init = wload.hw_init() if wload else self._weight_image(id_bits)
            banked = hw_depth > WEIGHT_BANK_WORDS
            if not banked:
                wmem = Memory(shape=unsigned(wbits), depth=hw_depth, init=init)
                m.submodules.weights = wmem
                wports = [wmem.read_port() for _ in range(R)]
                if wload is not None:
                    wwp = wmem.write_port()
                    m.d.comb += [wwp.addr.eq(wload.addr), wwp.data.eq(wload.data),
                                 wwp.en.eq(wload.en)]
        if not identity:
            rload = self._rload
            rmem = Memory(shape=unsigned(word_bits + beat_bits),
                          depth=rload.hw_depth if rload else ov.fan_in,
                          init=rload.hw_init() if rload else self._row_image())
            m.submodules.rows = rmem
            rports = [rmem.read_port() for _ in range(R)]
            if rload is not None:
                rp = rmem.write_port()
                m.d.comb += [rp.addr.eq(rload.addr), rp.data.eq(rload.data), rp.en.eq(rload.en)]

        # Banks of a few rows are registers, not LUT RAM: a 16-row LUT RAM would waste
        # most of its rows, and R x P x 2 of them (192 for gsc-cs conv1) fill the
        # RAM-capable slices of an ECP5 and scatter the placement. As registers they
        # need no read stage: stage C adds into the row it names.
        shallow = not self.compact and bank_depth <= SMALL_BANK_ROWS
        # Two ops on one accumulator (pass, id) are at least ``passes`` cycles apart, so
        # with three passes or more a bank's read data can be registered before the add
        # (stage C2): no bypass for back-to-back hits, and the block RAM's clock-to-out
        # (ECP5: 5.8 ns) is not in the read-add-write loop (gsc-cs fc1: 61.7 MHz with it).
        # Not for compact (area-first) engines: C2's registers cost the iCEBreaker's
        # digits build about 300 logic cells more than the UP5K has.
        split = not shallow and not self.compact and passes >= 3
        # With C2 the product is needed a cycle later. On ECP5 it is registered once more
        # after the DSP block; elsewhere the operands wait instead: yosys's ice40_dsp takes
        # a product register followed by a second one into SB_MAC16 but leaves the second
        # behind, undriven, and opt_dff then ties the product to 0 (yosys 0.70).
        dsp_registers = is_ecp5(platform)
        # ECP5: a weight memory of one block's depth feeds the DSP blocks' input register
        # A directly; a deeper one (behind an output multiplexer, or banked) keeps its
        # fabric register b_data, and the DSP's register A is one more stage (D), so no
        # block mixes a registered and an unregistered input (nextpnr times such a block
        # as all-combinational). The value waits a cycle to match, and the product is a
        # cycle later: with C2 (split) it is C2's product; otherwise stage C (the bank
        # read, then the write) moves a cycle later (``c_late``).
        direct = dsp_registers and not banked and wdepth <= DSP_DIRECT_WEIGHT_WORDS
        a_stage = dsp_registers and not direct
        late_product = split and (not dsp_registers or a_stage)
        c_late = a_stage and not split
        banks = []  # banks[r][k][buffer]: (write port, read port), or the rows (shallow)
        for r in range(R):
            row = []
            for k in range(P):
                pair = []
                for b in range(2):
                    if shallow:
                        pair.append([Signal(signed(A), name=f"acc_{r}_{k}_{b}_{j}",
                                            reset_less=True) for j in range(bank_depth)])
                        continue
                    mem = Memory(shape=signed(A), depth=bank_depth, init=[])
                    m.submodules[f"acc_{r}_{k}_{b}"] = mem
                    wp = mem.write_port()
                    pair.append((wp, mem.read_port(transparent_for=() if split else (wp,))))
                row.append(pair)
            banks.append(row)

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
        if not identity:
            for r in range(R):
                m.d.comb += [rports[r].addr.eq(self.i.payload.entries[r].index),
                             rports[r].en.eq(load_a0)]

        # Row (start, beats) of each A0 entry, masked by count.
        a0_start = [Signal(word_bits, name=f"a0_start_{r}") for r in range(R)]
        a0_nbeats = [Signal(beat_bits, name=f"a0_nbeats_{r}") for r in range(R)]
        for r in range(R):
            live = Const(r) < a0.count
            if identity:
                m.d.comb += [a0_start[r].eq(a0.entries[r].index), a0_nbeats[r].eq(live)]
            else:
                data = rports[r].data
                m.d.comb += [a0_start[r].eq(data[:word_bits]),
                             a0_nbeats[r].eq(Mux(live, data[word_bits:], 0))]
        a0_maxb = Signal(beat_bits)
        acc = Const(1, beat_bits)
        for r in range(R):
            acc = Mux(a0_nbeats[r] > acc, a0_nbeats[r], acc)
        m.d.comb += a0_maxb.eq(acc)

        # ---------------- A1: sequencer over (row beat, pass)
        a1_active = Signal()
        # Weight-memory address of each entry's next op: (start + beat) * passes + pss,
        # kept as a counter (one step per op) so no adder or multiplier sits in front
        # of the memory.
        waddr = [Signal(range(max(wdepth, 2)), name=f"waddr_{r}") for r in range(R)]
        cur_nbeats = [Signal(beat_bits, name=f"cur_nbeats_{r}") for r in range(R)]
        cur_value = [Signal(signed(8), name=f"cur_value_{r}", reset_less=True) for r in range(R)]
        cur_maxb = Signal(beat_bits)
        cur_last = Signal()
        cur_end = Signal()
        beat = Signal(beat_bits)
        pss = Signal(pass_bits)

        acc_buf = Signal()  # buffer that new ops accumulate into
        full = Signal(2)  # buffer holds a group not yet drained
        drain_done = Signal()  # the drain finished a buffer this cycle
        drain_done_buf = Signal()

        issue = Signal()
        final_op = Signal()  # the last op of the current beat
        held = Signal()  # compact: the drain's last sum of buffer ``e_buf`` not yet taken
        e_buf = Signal()
        m.d.comb += [
            issue.eq(a1_active & ~full.bit_select(acc_buf, 1) & ~(held & (e_buf == acc_buf))),
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

        G = LANES_PER_COPY
        copies = -(-P // G)

        group_op = Signal()  # the op that completes a group
        m.d.comb += group_op.eq(final_op & cur_last)
        full_next = Signal(2)
        m.d.comb += full_next.eq(full)
        with m.If(drain_done):
            m.d.comb += full_next.bit_select(drain_done_buf, 1).eq(0)
        with m.If(group_op):
            m.d.comb += full_next.bit_select(acc_buf, 1).eq(1)
            m.d.sync += acc_buf.eq(~acc_buf)
        m.d.sync += full.eq(full_next)

        if banked:
            wdata = self._weight_banks(m, hw_depth, wbits, init, waddr, issue)
        else:
            for r in range(R):
                m.d.comb += [wports[r].addr.eq(waddr[r]), wports[r].en.eq(issue)]
            wdata = [wports[r].data for r in range(R)]
        if self.spram and not banked:  # (banked: a model of the SPRAM off the iCE40)
            # Single-port: one address for reads and loader writes (the core is idle
            # while the host loads).
            m.d.comb += wports[0].addr.eq(Mux(wload.en, wload.addr, waddr[0]))

        # ---------------- W: the weight words arrive (memory output, not yet registered;
        # banked memories: a cycle later, out of the bank multiplexer)
        w_live = [beat < cur_nbeats[r] for r in range(R)]
        w_value = cur_value
        w_valid, w_pass, w_buf, w_group, w_end = issue, pss, acc_buf, group_op, cur_end
        for stage in ("w", "w2")[:1 + banked]:
            w_valid, w_pass, w_buf, w_group, w_end, *w_live = [
                _register(m, f"{stage}_{name}", v) for name, v in zip(
                    ("valid", "pass", "buf", "group", "end", *(f"live_{r}" for r in range(R))),
                    (w_valid, w_pass, w_buf, w_group, w_end, *w_live))]
        if banked:  # the values wait a cycle before their copies
            w_value = [_register(m, f"w_value_{r}", v, reset_less=True)
                       for r, v in enumerate(cur_value)]

        # Each entry's value, one copy per G lanes from W on (``replicate``; no enable, so
        # no logic fans out to the copies): W's copies, then the products' operand
        # registers (ECP5: in the DSP blocks). No register drives more than G multipliers.
        rw_value = [replicate(m, f"w_value_{r}_rep" if banked else f"w_value_{r}", w_value[r],
                              copies, reset_less=True)
                    for r in range(R)]

        # ---------------- B: registered weight words; products; bank reads
        # The register keeps the block RAM's slow clock-to-out out of the multiplier
        # and bank-address paths (ECP5: 5.6 ns DOA, the critical path without it).
        b_valid = Signal()
        b_live = [Signal(name=f"b_live_{r}") for r in range(R)]
        # Datapath registers without reset (the valid flags carry it).
        b_data = [Signal(P * slot_bits, name=f"b_data_{r}", reset_less=True) for r in range(R)]
        b_buf = Signal()
        b_group = Signal()
        b_end = Signal()
        m.d.sync += [b_valid.eq(w_valid), b_buf.eq(w_buf),
                     b_group.eq(w_group), b_end.eq(w_end)]
        for r in range(R):
            m.d.sync += [b_live[r].eq(w_live[r]), b_data[r].eq(wdata[r])]
        # The registers every lane reads, one copy per group of G lanes (``replicate``).
        # (The pass's first bank row, pass * K, so one adder sits before a bank address.)
        rb_pass = (replicate(m, "b_pass", const_mul(w_pass, K), copies) if passes > 1
                   else [Const(0, 1)] * copies)  # one pass: no register to copy
        if not shallow and not c_late:  # the banks' read ports: B's address or the drain's
            rb_valid = replicate(m, "b_valid", w_valid, copies)
            rb_buf = replicate(m, "b_buf", w_buf, copies)

        rc_buf = replicate(m, "c_buf", b_buf, copies)
        if c_late and not shallow:  # the bank reads move to stage C
            rc_valid = replicate(m, "c_valid", b_valid, copies)
        # The value's wait for register D (``a_stage``) or for C2 (off ECP5), per copy.
        rd_value = ([[_register(m, f"b2_value_{r}_{g}", v, reset_less=True)
                      for g, v in enumerate(rw_value[r])] for r in range(R)]
                    if late_product or c_late else rw_value)
        rc_live = [replicate(m, f"c_live_{r}", b_valid & b_live[r], copies) for r in range(R)]
        c_addr = [[Signal(range(bank_depth), name=f"c_addr_{r}_{k}") for k in range(P)]
                  for r in range(R)]
        b_addrs = [[None] * P for _ in range(R)]
        c_prod = [[None] * P for _ in range(R)]
        for r in range(R):
            data = b_data[r]
            for k in range(P):
                slot = data[k * slot_bits:(k + 1) * slot_bits]
                kid = slot[8:8 + id_bits]
                addr = Signal(range(bank_depth), name=f"b_addr_{r}_{k}")
                m.d.comb += addr.eq(rb_pass[k // G] + kid)
                m.d.sync += c_addr[r][k].eq(addr)
                b_addrs[r][k] = addr
                # B's operand registers and C's product register (ECP5: in MULT18X18D).
                # The weight's operand register is b_data (ECP5: then the DSP's register
                # A, ``a_stage``), except that a weight memory of one block's depth feeds
                # the DSP block's own input register directly.
                weight = (wdata[r][k * slot_bits:k * slot_bits + 8] if direct
                          else slot[:8]).as_signed()
                value = rd_value[r][k // G]
                if late_product and not a_stage:  # off ECP5 the weight waits in the fabric
                    weight = _register(m, f"b2_weight_{r}_{k}", weight, reset_less=True)
                c_prod[r][k] = registered_product(m, f"c_prod_{r}_{k}", weight, value,
                                                  platform,
                                                  a_registered=not (direct or a_stage))

        # ---------------- C: read-modify-write (bank ports are wired below, with the drain's)

        pending = Signal(2)  # groups complete in a buffer, waiting for the drain
        pending_end = Signal(2)

        # ---------------- drain
        n_blocks = -(-M // P)
        d_active = Signal()
        d_buf = Signal()
        d_end = Signal()
        d_block = Signal(range(max(n_blocks, 2)))
        d_id = Signal(range(max(K, 2)))
        d_pass = Signal(pass_bits)
        d_addr = Signal(range(bank_depth))  # d_pass * K + d_id, stepped with them
        d_next = Signal()  # the buffer the next drain reads (groups drain in order)

        inflight = Signal(2)
        d_issue = Signal()
        d_final = Signal()
        e_valid = Signal()
        e_last = Signal()
        if self.compact:
            # The bank's read data is the output register: issue when it is free or taken.
            m.d.comb += [
                d_issue.eq(d_active & (~e_valid | self.o.ready)),
                # A drained buffer's last sum is held in its bank's read data until it is
                # taken: no new group may read that bank before (see ``issue``).
                held.eq(e_valid & e_last & ~self.o.ready),
            ]
        else:
            fifo = SyncFIFOBuffered(width=P * A + 2, depth=6)
            m.submodules.fifo = fifo
            # Two sums in flight: one read from the banks (E), one summed into F.
            m.d.comb += d_issue.eq(d_active & (fifo.level + inflight < fifo.depth))
        m.d.comb += [
            d_final.eq(d_issue & (d_block == n_blocks - 1)),
            drain_done.eq(d_final),
            drain_done_buf.eq(d_buf),
        ]
        start = Signal()
        # A drain may start in the cycle the previous one requests its final block.
        m.d.comb += start.eq((~d_active | d_final) & pending.bit_select(d_next, 1))
        pend_next = Signal(2)
        m.d.comb += pend_next.eq(pending)
        # A group's last op is in B: its write (C) lands this cycle, before the
        # drain's first read (the cycle after the drain starts) -- no gap needed.
        # (split: the write lands a cycle later, in C2, so the group is complete in C.)
        g_valid, g_group, g_buf, g_end = b_valid, b_group, b_buf, b_end
        if split or c_late:
            g_valid, g_group, g_buf, g_end = [_register(m, f"c_{n}", v) for n, v in zip(
                ("valid", "group", "buf", "end"), (b_valid, b_group, b_buf, b_end))]
        with m.If(g_valid & g_group):
            m.d.comb += pend_next.bit_select(g_buf, 1).eq(1)
            m.d.sync += pending_end.bit_select(g_buf, 1).eq(g_end)
        with m.If(start):
            m.d.comb += pend_next.bit_select(d_next, 1).eq(0)
            m.d.sync += [d_active.eq(1), d_buf.eq(d_next), d_end.eq(pending_end.bit_select(d_next, 1)),
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
        # Stage E, per group of lanes: the bank address read, and a clear (write zero
        # back) the cycle after the read.
        re_clear = replicate(m, "e_clear", d_issue, copies)
        re_addr = replicate(m, "e_addr", d_addr, copies, en=d_issue)
        re_buf = replicate(m, "e_buf", d_buf, copies, en=d_issue)
        with m.If(d_issue):
            m.d.sync += [e_valid.eq(1), e_last.eq(d_final), e_end.eq(d_final & d_end),
                         e_buf.eq(d_buf)]
        with m.Elif(self.o.ready | ~Const(self.compact)):  # the FIFO takes every sum
            m.d.sync += e_valid.eq(0)

        # Bank ports: the buffer under accumulation serves stages B (read) and C
        # (write); the other serves the drain (read, then clear). The two never
        # name the same buffer: a buffer is drained only once its group is complete.
        rd_buf = rc_buf  # (c_late: the bank reads' buffer, in stage C)
        # The writes' product and address: stage C's, or (split, c_late) a cycle later.
        c2 = [[(c_prod[r][k], c_addr[r][k]) for k in range(P)] for r in range(R)]
        if split or c_late:  # stage C2's copies of C's registers, and its products and addresses
            rc_live = [[_register(m, f"c2_live_{r}_{g}", v) for g, v in enumerate(row)]
                       for r, row in enumerate(rc_live)]
            rc_buf = [_register(m, f"c2_buf_{g}", v) for g, v in enumerate(rc_buf)]
            c2 = [[(c_prod[r][k] if late_product or c_late else
                    _register(m, f"c2_prod_{r}_{k}", c_prod[r][k], reset_less=True),
                    _register(m, f"c2_addr_{r}_{k}", c_addr[r][k], reset_less=True))
                   for k in range(P)] for r in range(R)]
        for r in range(R):
            for k in range(P):
                g = k // G
                live, cbuf = rc_live[r][g], rc_buf[g]
                clear, ebuf, eaddr = re_clear[g], re_buf[g], re_addr[g]
                prod, addr = c2[r][k]
                for b in range(2):
                    if shallow:
                        rows = banks[r][k][b]
                        total = Signal(signed(A), name=f"c_sum_{r}_{k}_{b}")
                        m.d.comb += total.eq(_select(rows, addr) + prod)
                        with m.If(live & (cbuf == b)):
                            for j, acc_row in enumerate(rows):
                                with m.If(addr == j):
                                    m.d.sync += acc_row.eq(total)
                        with m.Elif(clear & (ebuf == b)):
                            for j, acc_row in enumerate(rows):
                                with m.If(eaddr == j):
                                    m.d.sync += acc_row.eq(0)
                        continue
                    wp, rp = banks[r][k][b]
                    if c_late:  # read in C, written in C2
                        rd = (rc_valid[g] & (rd_buf[g] == b), c_addr[r][k])
                    else:
                        rd = (rb_valid[g] & (rb_buf[g] == b), b_addrs[r][k])
                    with m.If(rd[0]):
                        m.d.comb += [rp.addr.eq(rd[1]), rp.en.eq(1)]
                    with m.Else():
                        m.d.comb += [rp.addr.eq(d_addr), rp.en.eq(d_issue & (d_buf == b))]
                    old = rp.data
                    if split:  # C2: C's read data registered (product and address: c2)
                        old = _register(m, f"c2_old_{r}_{k}_{b}", rp.data, reset_less=True)
                    with m.If(live & (cbuf == b)):
                        m.d.comb += [wp.addr.eq(addr), wp.data.eq(old + prod), wp.en.eq(1)]
                    with m.Elif(clear & (ebuf == b)):
                        m.d.comb += [wp.addr.eq(eaddr), wp.data.eq(0), wp.en.eq(1)]

        def drained(r, k, b):  # the drain's read of bank (r, k, b), in stage E
            if shallow:
                return _select(banks[r][k][b], re_addr[k // G])
            return banks[r][k][b][1].data

        sums = []
        for k in range(P):
            total = Const(0, signed(A))
            for r in range(R):
                total = total + Mux(re_buf[k // G], drained(r, k, 1), drained(r, k, 0))
            s = Signal(signed(A), name=f"drain_sum_{k}")
            m.d.comb += s.eq(total)
            sums.append(s)
        # ---------------- output
        if self.compact:
            m.d.comb += [self.o.valid.eq(e_valid),
                         self.o.payload.as_value().eq(Cat(*sums, e_last, e_end)),
                         inflight.eq(e_valid)]
        else:
            # F: the drain's sums registered before the FIFO (the bank reads, their buffer
            # select and the R-bank sum were the engine's critical path, 75 MHz at R=3).
            f_valid = Signal()
            f_data = Signal(P * A + 2, reset_less=True)
            m.d.sync += [f_valid.eq(e_valid), f_data.eq(Cat(*sums, e_last, e_end))]
            m.d.comb += [
                inflight.eq(e_valid + f_valid),
                fifo.w_data.eq(f_data),
                fifo.w_en.eq(f_valid),
                self.o.valid.eq(fifo.r_rdy),
                fifo.r_en.eq(self.o.ready),
                self.o.payload.as_value().eq(fifo.r_data),
            ]
        return m
