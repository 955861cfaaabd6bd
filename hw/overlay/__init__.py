"""The overlay engine: Complementary Sparsity matrix-vector product in hardware.

For every active input ``(index, value)`` of a group the engine reads the
words of overlay row ``index`` (each word: one slot per lane, a slot holds a
weight and a kernel id), multiplies each slot's weight by ``value`` and adds
the product to accumulator ``[lane][kernel id]``; at the end of the group it
emits the ``M`` sums. Its parts are the :class:`~.sequencer.Sequencer`, the
weight memory and row table (:class:`~.memory.ReadMemory`), the
:class:`~.products.Products`, the :class:`~.banks.AccumulatorBanks` and the
:class:`~.drain.Drain`; ``docs/overlay-engine.md`` describes the pipeline,
its output order, throughput and latency.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..loader import LoadPort
from ..streams import dense_layout, sparse_layout
from ..util import bits, check_int
from .banks import AccumulatorBanks
from .drain import Drain
from .memory import ReadMemory
from .products import Products
from .sequencer import Sequencer, row_table

__all__ = ["OverlayEngine", "worst_case_sum"]

#: Accumulator banks of at most this many rows are registers (engines with an
#: output FIFO): a 16-row LUT RAM would hold two of gsc-cs conv1's rows, and its
#: 192 banks filled 96% of an ECP5-85F's RAM-capable slices.
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


def _has_spram(platform) -> bool:
    """The platform is an iCE40 UltraPlus (SB_SPRAM256KA blocks)."""
    return str(getattr(platform, "device", "")).startswith("iCE40UP")


def worst_case_sum(weights: np.ndarray, kernel_ids: np.ndarray, kernels_per_overlay: int,
                   input_bound: int = 128) -> int:
    """Largest |sum| one accumulator ``[lane][kernel id]`` can reach with inputs of at most
    ``input_bound`` in magnitude (128: int8)."""
    lanes = weights.shape[1]
    acc = np.zeros(lanes * kernels_per_overlay, dtype=np.int64)
    lane = np.broadcast_to(np.arange(lanes), weights.shape)
    np.add.at(acc, lane.ravel() * kernels_per_overlay + kernel_ids.astype(np.int64).ravel(),
              np.abs(weights.astype(np.int64)).ravel())
    return int(acc.max(initial=0)) * input_bound


def _check_arrays(weights, kernel_ids, row_start, kernel_map) -> None:
    """Raise ValueError unless the packed layer's arrays are consistent."""
    for name, arr, nd in (("weights", weights, 2), ("kernel_ids", kernel_ids, 2),
                          ("row_start", row_start, 1), ("kernel_map", kernel_map, 2)):
        if not isinstance(arr, np.ndarray) or arr.ndim != nd or arr.dtype.kind not in "iu":
            got = (f"{arr.ndim}-D {arr.dtype}" if isinstance(arr, np.ndarray)
                   else type(arr).__name__)
            raise ValueError(f"{name} must be a {nd}-D integer array, got {got}")
    if kernel_map.shape[0] < 1 or kernel_map.shape[1] < 1:
        raise ValueError(f"kernel_map must be (lanes, K) with both at least 1, "
                         f"got shape {kernel_map.shape}")
    if weights.shape != kernel_ids.shape or weights.shape[1] != kernel_map.shape[0]:
        raise ValueError(f"weights {weights.shape} and kernel_ids {kernel_ids.shape} must both "
                         f"be (words, {kernel_map.shape[0]})")
    if weights.size and (weights.min() < -128 or weights.max() > 127):
        raise ValueError(f"weights must be int8 values, got {weights.min()}..{weights.max()}")
    if kernel_ids.size and (kernel_ids.min() < 0 or kernel_ids.max() >= kernel_map.shape[1]):
        raise ValueError(f"kernel ids must be 0..{kernel_map.shape[1] - 1}, "
                         f"got {kernel_ids.min()}..{kernel_ids.max()}")
    if (row_start.shape[0] < 2 or row_start[0] != 0 or row_start[-1] != weights.shape[0]
            or np.any(np.diff(row_start) < 0)):
        raise ValueError(f"row_start must start at 0, never decrease and end at the word "
                         f"count {weights.shape[0]}, got {row_start.shape[0]} entries "
                         f"from {row_start[:1].tolist()} to {row_start[-1:].tolist()}")


class OverlayEngine(wiring.Component):
    """Complementary-sparse matrix-vector engine over packed overlays.

    Parameters
    ----------
    weights : ndarray of int, shape (words, L)
        The overlay words' weights (int8 values), one slot per lane.
    kernel_ids : ndarray of int, shape (words, L)
        Each slot's kernel id, ``0 .. K-1``.
    row_start : ndarray of int, shape (fan_in + 1,)
        Input ``i``'s row is words ``row_start[i] .. row_start[i+1]-1``.
    kernel_map : ndarray of int, shape (L, K)
        Output channel of kernel id ``j`` in lane ``l``, or -1 for an unused id;
        the used slots must be those with ``j * L + l < M`` (the drain order).
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
    value_bits : int
        Signed bits of an input value: 8 (int8 activations) or 9 (int9).
    weight_bits : int
        Signed bits of a weight, 2 to 8: a model quantized to fewer bits than 8
        has narrower weight memories and products, and where
        ``value_bits + 2 * weight_bits + 1 <= dsp_width`` (4-bit weights and
        int8 values on ECP5) two lanes share one multiplier (:attr:`paired`).
    dsp_width : int
        Signed input width of the part's multipliers (16 iCE40, 18 ECP5).
    input_bound : int, optional
        The largest |input value| (default ``2**(value_bits - 1)``): the
        accumulators are proven for it.

    Attributes
    ----------
    lanes, kernels_per_overlay, num_kernels, fan_in, words : int
        ``L``, ``K``, ``M``, the inputs and the overlay words.
    row_beats : ndarray of int, shape (fan_in,)
        Words of each input's row.
    load_ports : list of LoadPort
        The host loader's targets: ``weights``, and ``rows`` (a row table).

    Members
    -------
    i : In(stream.Signature(sparse_layout(R, index_bits, signed(value_bits))))
        Groups of active inputs (index = fan-in position).
    o : Out(stream.Signature(dense_layout(P, signed(acc_bits))))
        Per group, the ``M`` sums in drain order; ``last``/``end`` follow the
        input group's.
    load_weights, load_rows : In(LoadSignature(...))
        With ``loadable``: the loader's writes into the weight memory and (for
        a row table) the row table.

    Raises
    ------
    ValueError
        A parameter is out of range, or the used slots are not a prefix of the
        drain order.
    """

    def __init__(self, weights: np.ndarray, kernel_ids: np.ndarray, row_start: np.ndarray,
                 kernel_map: np.ndarray, *, entries: int = 1, lanes_per_beat: int | None = None,
                 acc_bits: int | None = None, loadable: bool = False, spram: bool = False,
                 compact: bool = False, value_bits: int = 8, input_bound: int | None = None,
                 weight_bits: int = 8, dsp_width: int = 18):
        _check_arrays(weights, kernel_ids, row_start, kernel_map)
        self.weight_bits = check_int("weight_bits", weight_bits, 2, 8)
        wlo, whi = -(1 << (weight_bits - 1)), (1 << (weight_bits - 1)) - 1
        if weights.size and (weights.min() < wlo or weights.max() > whi):
            raise ValueError(f"weights must be {weight_bits}-bit values ({wlo}..{whi}), got "
                             f"{weights.min()}..{weights.max()}")
        self.value_bits = check_int("value_bits", value_bits, 2, 10)
        bound = 1 << (value_bits - 1) if input_bound is None else check_int(
            "input_bound", input_bound, 1, 1 << (value_bits - 1))
        lanes, k = kernel_map.shape
        if not isinstance(entries, int) or not 1 <= entries <= 64:
            raise ValueError(f"entries (R) must be an integer from 1 to 64, got {entries!r}")
        p = lanes if lanes_per_beat is None else lanes_per_beat
        if not isinstance(p, int) or p < 1 or lanes % p:
            raise ValueError(f"lanes_per_beat (P) must divide the {lanes} lanes, got {p!r}")
        used = kernel_map >= 0
        order = np.arange(k)[None, :] * lanes + np.arange(lanes)[:, None]
        if not np.array_equal(used, order < np.count_nonzero(used)):
            raise ValueError("the used slots (lane l, id j) must be exactly those with "
                             "j * L + l < M; pack the layer with cosparse.compiler.packer.pack")
        worst = worst_case_sum(weights, kernel_ids, k, bound)
        need = max(worst.bit_length() + 1, 2)
        acc_bits = need if acc_bits is None else acc_bits
        if not isinstance(acc_bits, int) or not need <= acc_bits <= 48:
            raise ValueError(f"acc_bits must be an integer from {need} (this layer's worst case "
                             f"{worst}) to 48, got {acc_bits!r}")
        self.weights, self.kernel_ids = weights, kernel_ids
        self.row_start, self.kernel_map = row_start, kernel_map
        self.lanes, self.kernels_per_overlay = lanes, k
        self.num_kernels = int(np.count_nonzero(used))
        self.fan_in, self.words = row_start.shape[0] - 1, weights.shape[0]
        self.entries, self.lanes_per_beat, self.acc_bits = entries, p, acc_bits
        self.passes = lanes // p
        if dsp_width not in (16, 18):
            raise ValueError(f"dsp_width must be 16 (iCE40) or 18 (ECP5), got {dsp_width!r}")
        #: Two lanes' weights share a multiplier (``v * (w0 + (w1 << S))``): their packed
        #: operand fits one signed DSP input.
        self.paired = p >= 2 and value_bits + 2 * weight_bits + 1 <= dsp_width
        self.index_bits = bits(self.fan_in)
        self.in_layout = sparse_layout(entries, self.index_bits, signed(value_bits))
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
            self._wload = LoadPort("weights", p * (weight_bits + bits(k)),
                                   max(self.words * self.passes, 1),
                                   tuple(self._weight_image()), has_init=not spram)
            self.load_ports.append(self._wload)
            if not self._identity:
                width, image = row_table(row_start)
                self._rload = LoadPort("rows", width, self.fan_in, tuple(image))
                self.load_ports.append(self._rload)
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
            **{lp.member: In(lp.signature) for lp in self.load_ports},
        })

    # ------------------------------------------------------------------
    @property
    def multipliers(self) -> int:
        return self.entries * self.lanes_per_beat

    @property
    def dsps(self) -> int:
        """DSP multipliers: the ``R * P`` products, one per pair of lanes when
        :attr:`paired` (lanes pair within a register copy's ``LANES_PER_COPY``)."""
        if not self.paired:
            return self.multipliers
        p = self.lanes_per_beat
        pairs = sum(min(LANES_PER_COPY, p - g) // 2 + min(LANES_PER_COPY, p - g) % 2
                    for g in range(0, p, LANES_PER_COPY))
        return self.entries * pairs

    @property
    def row_beats(self) -> np.ndarray:
        """Words (memory beats) each input row needs, shape (fan_in,)."""
        return np.diff(self.row_start)

    def cycles_per_beat(self, row_beats: int = 1) -> int:
        """Cycles one input beat takes when its largest row has ``row_beats`` words."""
        return max(1, row_beats) * self.passes

    def _weight_image(self) -> list[int]:
        """The weight memory's words: per overlay word and pass, ``P`` slots of
        (weight, kernel id), slot 0 in the low bits."""
        p, id_bits = self.lanes_per_beat, bits(self.kernels_per_overlay)
        wb = self.weight_bits
        slot_bits = wb + id_bits
        w = (self.weights.astype(np.int64) & ((1 << wb) - 1)) | (
            self.kernel_ids.astype(np.int64) << wb)
        w = w.reshape(self.words, self.passes, p)  # word, pass, slot
        shifts = np.arange(p, dtype=object) * slot_bits
        return [int(sum(int(v) << int(s) for v, s in zip(row, shifts)))
                for row in w.reshape(-1, p)] or [0]

    @property
    def _identity(self) -> bool:
        """Every input's row is one word at its own index (complementary packing)."""
        return bool(np.all(self.row_beats == 1))

    def elaborate(self, platform):
        m = Module()
        R, P, A = self.entries, self.lanes_per_beat, self.acc_bits
        passes, K = self.passes, self.kernels_per_overlay
        rows = passes * K  # accumulator bank rows (pass, id), one memory per buffer
        parts = dict(lanes_per_copy=LANES_PER_COPY)

        wload, rload = self._wload, self._rload
        spram_blocks = self.spram and _has_spram(platform)
        weights = ReadMemory("weights", P * (self.weight_bits + bits(K)),
                             wload.image if wload else self._weight_image(), reads=R,
                             load=wload, bank_words=WEIGHT_BANK_WORDS,
                             single_port=self.spram, spram=spram_blocks)
        m.submodules.weight_memory = weights
        if wload is not None:
            wiring.connect(m, wiring.flipped(self.load_weights), weights.load)
        seq = m.submodules.sequencer = Sequencer(R, self.row_start, passes, self.value_bits)
        if seq.table:
            table = ReadMemory("rows", seq.word_bits + seq.beat_bits,
                               rload.image if rload else row_table(self.row_start)[1],
                               reads=R, load=rload)
            m.submodules.row_table = table
            if rload is not None:
                wiring.connect(m, wiring.flipped(self.load_rows), table.load)
            m.d.comb += [table.en.eq(seq.row_en),
                         *(table.addr[r].eq(seq.row_addr[r]) for r in range(R)),
                         *(seq.row_data[r].eq(table.data[r]) for r in range(R))]
        # The memories are the engine's own submodules: their paths (``<unit>.weights``)
        # name the memory images and load targets (images in this order: a banked
        # weight memory after the row table).
        parts_in_order = (weights,) if not seq.table else (
            (table, weights) if weights.banked else (weights, table))
        for part in parts_in_order:
            for name, mem in part.memories.items():
                m.submodules[name] = mem

        # Banks of a few rows are registers, not LUT RAM (engines with a FIFO).
        shallow = not self.compact and rows <= SMALL_BANK_ROWS
        # Two ops on one accumulator (pass, id) are at least ``passes`` cycles apart, so
        # with three passes or more a bank's read data can be registered before the add
        # (stage C2): no bypass for back-to-back hits, and the block RAM's clock-to-out
        # (ECP5: 5.8 ns) is not in the read-add-write loop (gsc-cs fc1: 61.7 MHz with it).
        # Not for compact (area-first) engines: C2's registers cost the iCEBreaker's
        # digits build about 300 logic cells more than the UP5K has.
        split = not shallow and not self.compact and passes >= 3
        products = m.submodules.products = Products(
            R, P, K, passes, banked_weights=weights.banked, registers=shallow, split=split,
            direct_weights=(not weights.banked
                            and max(self.words * passes, 1) <= DSP_DIRECT_WEIGHT_WORDS),
            value_bits=self.value_bits, weight_bits=self.weight_bits, paired=self.paired,
            **parts)
        banks = m.submodules.banks = AccumulatorBanks(
            R, P, rows, A, registers=shallow, read_register=split, prod_bits=products.prod_bits,
            compact=self.compact, **parts)
        drain = m.submodules.drain = Drain(self.num_kernels, P, K, passes, A,
                                           compact=self.compact,
                                           read_latency=banks.drain_latency, **parts)

        wiring.connect(m, wiring.flipped(self.i), seq.i)
        m.d.comb += [
            weights.en.eq(seq.issue),
            *(weights.addr[r].eq(seq.addr[r]) for r in range(R)),
            *(getattr(products, n).eq(getattr(seq, n))
              for n in ("issue", "pass_index", "buf", "group", "end")),
            *(getattr(products, n)[r].eq(getattr(seq, n)[r])
              for n in ("live", "value") for r in range(R)),
            *(products.word[r].eq(weights.data[r]) for r in range(R)),
            *(getattr(banks, n)[g].eq(getattr(products, n)[g]) for g in range(products.copies)
              for n in ("read_valid", "read_buf", "write_buf")),
            *(getattr(banks, n)[r][g].eq(getattr(products, n)[r][g])
              for r in range(R) for g in range(products.copies) for n in ("write_live",)),
            *(getattr(banks, n)[r][k].eq(getattr(products, n)[r][k])
              for r in range(R) for k in range(P) for n in ("read_addr", "write_addr", "prod")),
            *(getattr(drain, n).eq(getattr(products, n))
              for n in ("group_done", "group_buf", "group_end")),
            banks.drain_en.eq(drain.issue), banks.drain_buf.eq(drain.buf),
            banks.drain_addr.eq(drain.addr),
            *(getattr(banks, n)[g].eq(getattr(drain, n)[g]) for g in range(drain.copies)
              for n in ("clear", "clear_buf", "clear_addr")),
            *(drain.sums[k].eq(banks.sums[k]) for k in range(P)),
            seq.drain_done.eq(drain.done), seq.drain_buf.eq(drain.buf),
            seq.held.eq(drain.held), seq.held_buf.eq(drain.held_buf),
        ]
        wiring.connect(m, drain.o, wiring.flipped(self.o))
        return m
