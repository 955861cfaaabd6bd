"""k-winners-take-all units: local (per position, over channels) and global (per frame).

Both units take a dense stream (:func:`~cosparse.hw.streams.dense_layout`,
``D`` int8 elements per beat) and emit a sparse stream
(:func:`~cosparse.hw.streams.sparse_layout`, up to ``R`` entries per beat)
holding, per group, the winners in increasing index order. The rules are the
golden model's (:func:`cosparse.sim.golden.kwta_mask`):

* the selection key is ``x * boost[c]`` (``boost`` a positive integer per
  channel or unit, 1 when absent), the output keeps ``x``;
* exactly ``k`` winners: the ``k`` largest keys, on equal keys the *lower
  index* wins (channel for :class:`LocalKWTA`, flat HWC index for
  :class:`GlobalKWTA`); negative values can win;
* a winner whose value is 0 is indistinguishable from a loser and is dropped
  from the sparse stream; a group without non-zero winners is one empty beat
  (``count == 0``, ``last`` set).

Output beats are packed the canonical way (:func:`~cosparse.hw.streams.sparse_beats`):
every beat of a group but its last holds exactly ``R`` entries; entries past
``count`` are zero.

Keys are compared as unsigned *offset* integers (the sign bit inverted),
which orders them exactly like the signed keys. A key is ``8 + ceil(log2(max
boost))`` bits wide: 8 without boost, at most 24 (boost up to 65535).
"""

from __future__ import annotations


from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .util import bits, check_int, onehot, popcount
from .streams import dense_layout, sparse_layout

__all__ = ["LocalKWTA", "GlobalKWTA", "MAX_BOOST", "key_bits"]

#: Largest boost factor (unsigned 16 bits, as in the IR).
MAX_BOOST = (1 << 16) - 1




def key_bits(boost) -> int:
    """Signed width of ``x * boost`` for int8 ``x``: ``8 + ceil(log2(max boost))``."""
    if boost is None:
        return 8
    return 8 + ceil_log2(max(boost))




def _check_boost(boost, n: int, what: str) -> tuple[int, ...] | None:
    """A tuple of ``n`` integers in 1..MAX_BOOST, or None (all ones is None)."""
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
    bad = [b for b in vals if not 1 <= b <= MAX_BOOST]
    if bad:
        raise ValueError(f"boost values must be integers from 1 to {MAX_BOOST}, got {bad[0]!r}")
    if all(b == 1 for b in vals):
        return None
    return tuple(vals)






def _boost_rom(boost, D: int, beats: int, bb: int) -> Memory | None:
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


class _Keys:
    """Key datapath: lane boosts one cycle after the beat address, then ``x * boost``.

    ``lanes(port)`` gives the ``D`` boost values of a ROM read port (or the
    constants when a group is one beat); ``ukey(x, b)`` is the offset key.
    """

    def __init__(self, boost, D: int, beats: int):
        self.boost, self.D, self.beats = boost, D, beats
        self.kb = key_bits(boost)
        self.bb = max(boost).bit_length() if boost is not None else 1
        self.rom = _boost_rom(boost, D, beats, self.bb)

    def lanes(self, m: Module, addr, en) -> list | None:
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
        kb = self.kb
        if b is None:
            return Cat(x[:7], ~x[7])
        prod = x.as_signed() * b
        return Cat(prod[:kb - 1], ~prod[kb - 1])


class _SerialOutput:
    """The output side of a serial k-WTA: a beat being filled, then the output register.

    ``append(entry)`` adds an entry to the beat being filled; ``send(n,
    ents, last, end)`` loads the output register (when ``free``);
    ``with_entry(entry, has)`` is the filled entries plus ``entry`` (when
    ``has``) at the next place, zeros after: a beat's canonical contents.
    """

    def __init__(self, m: Module, o, R: int, k: int, ib: int):
        self.m, self.R = m, R
        self.b_ent = [Signal(ib + 8, name=f"b_ent_{r}") for r in range(R)]
        self.b_cnt = Signal(range(R + 1))
        self.o_v, self.o_last, self.o_end = Signal(), Signal(), Signal()
        self.o_cnt = Signal(range(R + 1))
        self.o_ent = [Signal(ib + 8, name=f"o_ent_{r}") for r in range(R)]
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


class LocalKWTA(wiring.Component):
    """k-winners-take-all over the ``C`` channels of each position of a map.

    Each group of the dense input (one position's channels, ``ceil(C / D)``
    beats) becomes one group of the sparse output: its ``k`` winners with a
    non-zero value, as ``(channel, value)`` in channel order. Any number of
    positions per frame; ``end`` is passed on to the frame's final beat.

    Structure
    ---------
    ::

        i (dense, D/beat) -> P0 register, boost ROM read (per beat of a position)
          -> P1 keys x * boost               -> P2 rank of each lane in its beat
          -> P3 beat sorted by (key desc, channel asc)
          -> PN next beat -> PM beat being merged into the merge array: k
             cells sorted the same way, min(D, k) lanes merged per cycle; the
             first beat of a position starts from an empty array
          -> hold (the winners of the finished position)
          -> slot: each winner's place among the non-zero winners in channel
             order -> out (two deep): winners sorted by channel, R per beat

    The merge is a merge of two sorted lists: with ``g[i][t]`` = "lane ``t``
    beats cell ``i``" (strictly larger key: cells hold lower channels), cell
    ``i`` moves down by the number of lanes that beat it and lane ``t`` by
    the number of cells that beat it; both counts are thermometer codes, so
    each new cell is a one-hot select among ``(j + 1) + min(j + 1, D)``
    candidates decided by two ``g`` bits. ``g`` is a register computed one
    beat ahead: PN's lanes are compared with the cells and with PM's lanes,
    and every new cell selects its comparison bits along with its record
    (``k * min(D, k) + min(D, k)**2`` comparators in all). Every hand-off
    after the merge is decided from registers; ``o.ready`` only reaches the
    out registers.

    The merge array, hold, slot and out registers form a pipeline of
    positions: the winners of position ``p`` are sorted and emitted while
    ``p + 1`` is accepted.

    With one element per beat (``D = 1``, the smallest parts) the unit is
    built serially instead: each element is inserted into ``k`` cells kept
    sorted (``k`` comparators, no merge network), and the finished
    position's winners are emitted in channel order by picking the lowest
    remaining channel once per cycle (``k`` cycles at most, overlapping the
    next position's ``C``). Same interface; ``max(C, k + 2)`` cycles per
    position.

    Throughput
    ----------
    One input beat per cycle with no bubble between positions: a position
    takes ``ceil(C / D)`` cycles (measured: 8 cycles per position at C=64,
    D=8), as long as its output beats ``max(1, ceil(active / R))`` fit in
    that time (else the output sets the pace). Latency from a position's
    last input beat to its first output beat: 9 cycles.

    Timing (yosys ``synth_ecp5`` + nextpnr-ecp5, LFE5U-85F, out of context,
    C=64, k=8, D=8, R=8): 113 MHz with 8-bit keys (3,600 LUT4, 1,400 FF),
    106 MHz with boost up to 255 (16-bit keys; 5,000 LUT4, 2,100 FF, 8
    MULT18X18D).

    Parameters
    ----------
    channels : int
        ``C``, channels per position.
    k : int
        Winners per position, 1 to ``C`` (``k == C`` keeps every non-zero).
    width : int
        ``D``, elements per input beat.
    entries : int
        ``R``, entries per output beat (1 to 64).
    boost : sequence of int, optional
        Per-channel boost, ``C`` integers from 1 to 65535.

    Members
    -------
    i : In(stream.Signature(dense_layout(D, signed(8))))
    o : Out(stream.Signature(sparse_layout(R, bits(C), signed(8))))

    Raises
    ------
    ValueError
        A parameter is not an integer in its range, or ``boost`` has the
        wrong length or an out-of-range value.
    """

    def __init__(self, channels: int, k: int, *, width: int = 8, entries: int = 8, boost=None):
        check_int("channels", channels, 1)
        check_int("k", k, 1, channels)
        check_int("width (D)", width, 1)
        check_int("entries (R)", entries, 1, 64)
        self.channels, self.k, self.width, self.entries = channels, k, width, entries
        self.boost = _check_boost(boost, channels, "channel")
        self.beats = -(-channels // width)
        self.index_bits = bits(channels)
        self.key_bits = key_bits(self.boost)
        self.in_layout = dense_layout(width, signed(8))
        self.out_layout = sparse_layout(entries, self.index_bits, signed(8))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    @property
    def dsps(self) -> int:
        """Multipliers of the keys ``x * boost``: one per lane with boost, else none."""
        return self.width if self.boost is not None else 0

    @property
    def cycles_per_position(self) -> int:
        """Steady-state cycles per position: input-bound; serial (``D = 1``) at least
        ``k + 2`` (the hold load, then one winner per cycle)."""
        return max(self.beats, self.k + 2) if self.width == 1 else self.beats

    def elaborate(self, platform):
        if self.width == 1:
            return self._elaborate_serial()
        m = Module()
        C, k, D, R, B = self.channels, self.k, self.width, self.entries, self.beats
        ib, kb = self.index_bits, self.key_bits
        keys = _Keys(self.boost, D, B)
        if keys.rom is not None:
            m.submodules.boost_rom = keys.rom

        adv = Signal()  # the whole front pipeline (P0..P3, merge) moves
        p = self.i.payload
        m.d.comb += self.i.ready.eq(adv)

        # ---------------- P0: input register; the boost ROM is read alongside
        bg = Signal(range(max(B, 2)))  # beat of the position being accepted
        with m.If(self.i.valid & adv):
            with m.If(p.last):
                m.d.sync += bg.eq(0)
            with m.Elif(bg != B - 1):
                m.d.sync += bg.eq(bg + 1)
        v0, last0, end0 = Signal(), Signal(), Signal()
        bg0 = Signal.like(bg)
        x0 = [Signal(signed(8), name=f"x0_{d}") for d in range(D)]
        blanes = keys.lanes(m, bg, adv)
        with m.If(adv):
            m.d.sync += v0.eq(self.i.valid)
            with m.If(self.i.valid):
                m.d.sync += [bg0.eq(bg), last0.eq(p.last), end0.eq(p.end)]
                m.d.sync += [x0[d].eq(p.data[d]) for d in range(D)]

        # ---------------- P1: keys
        v1, last1, end1, first1 = Signal(), Signal(), Signal(), Signal()
        key1 = [Signal(kb, name=f"key1_{d}") for d in range(D)]
        idx1 = [Signal(ib, name=f"idx1_{d}") for d in range(D)]
        x1 = [Signal(signed(8), name=f"x1_{d}") for d in range(D)]
        lv1 = [Signal(name=f"lv1_{d}") for d in range(D)]
        with m.If(adv):
            m.d.sync += [v1.eq(v0), last1.eq(last0), end1.eq(end0), first1.eq(bg0 == 0)]
            for d in range(D):
                m.d.sync += [
                    key1[d].eq(keys.ukey(x0[d], None if blanes is None else blanes[d])),
                    idx1[d].eq(bg0 * D + d),
                    x1[d].eq(x0[d]),
                    lv1[d].eq(bg0 * D + d < C),
                ]

        # ---------------- P2: rank of each lane within its beat
        def beats(a, b):  # lane a (lower channel) ranks before lane b
            return lv1[a] & (~lv1[b] | (key1[a] >= key1[b]))

        wins = {(a, b): beats(a, b) for a in range(D) for b in range(a + 1, D)}
        rb = bits(D)
        rank2 = [Signal(rb, name=f"rank2_{d}") for d in range(D)]
        rec_w = kb + ib + 8 + 1
        rec1 = [Cat(key1[d], idx1[d], x1[d], lv1[d]) for d in range(D)]
        rec2 = [Signal(rec_w, name=f"rec2_{d}") for d in range(D)]
        v2, last2, end2, first2 = Signal(), Signal(), Signal(), Signal()
        with m.If(adv):
            m.d.sync += [v2.eq(v1), last2.eq(last1), end2.eq(end1), first2.eq(first1)]
            for t in range(D):
                above = [wins[(a, t)] for a in range(t)] + [~wins[(t, b)] for b in range(t + 1, D)]
                m.d.sync += [rank2[t].eq(popcount(above)), rec2[t].eq(rec1[t])]

        def fields(rec):
            return (rec[:kb], rec[kb:kb + ib], rec[kb + ib:kb + ib + 8],
                    rec[kb + ib + 8])

        # ---------------- P3: the beat sorted best first
        Dm = min(D, k)  # only the best min(D, k) lanes can enter the top k
        rec3 = [Signal(rec_w, name=f"rec3_{t}") for t in range(Dm)]
        v3, last3, end3, first3 = Signal(), Signal(), Signal(), Signal()
        with m.If(adv):
            m.d.sync += [v3.eq(v2), last3.eq(last2), end3.eq(end2), first3.eq(first2)]
            m.d.sync += [rec3[j].eq(onehot((rank2[t] == j, rec2[t]) for t in range(D)))
                         for j in range(Dm)]

        # ---------------- PN (next beat), PM (beat being merged), merge array
        # g[i][t] (a register): lane t of PM beats cell i (cells hold lower
        # channels, so ties go to the cell; an empty cell loses). Comparators
        # work one beat ahead: PN's lanes against the cells (in the loop) and
        # against PM's lanes (registered as the beats enter PN and PM); each new
        # cell selects its comparison bits with its record, so the loop holds
        # one select and one comparator, no popcount.
        recn = [Signal(rec_w, name=f"recn_{t}") for t in range(Dm)]
        vn, lastn, endn, firstn = Signal(), Signal(), Signal(), Signal()
        recm = [Signal(rec_w, name=f"recm_{t}") for t in range(Dm)]
        vm, lastm, endm, firstm = Signal(), Signal(), Signal(), Signal()
        c_lane = [Signal(Dm, name=f"c_lane_{u}") for u in range(Dm)]  # [PM lane][PN lane]
        with m.If(adv):
            m.d.sync += [vn.eq(v3), lastn.eq(last3), endn.eq(end3), firstn.eq(first3),
                         vm.eq(vn), lastm.eq(lastn), endm.eq(endn), firstm.eq(firstn)]
            m.d.sync += [recn[t].eq(rec3[t]) for t in range(Dm)]
            m.d.sync += [recm[t].eq(recn[t]) for t in range(Dm)]
            m.d.sync += [c_lane[u].eq(Cat(*[fields(rec3[t])[0] > fields(recn[u])[0]
                                            for t in range(Dm)])) for u in range(Dm)]
        cells = [Signal(rec_w, name=f"cell_{i}") for i in range(k)]
        g = [[Signal(name=f"g_{i}_{t}") for t in range(Dm)] for i in range(k)]
        bn_key = [fields(r)[0] for r in recn]
        bn_valid = [fields(r)[3] for r in recn]
        c_cell = [Cat(*[bn_key[t] > fields(cells[i])[0] for t in range(Dm)]) for i in range(k)]
        a_valid = [fields(c)[3] & ~(firstm & vm) for c in cells]
        a_rec = [Cat(c[:rec_w - 1], a_valid[i], c_cell[i]) for i, c in enumerate(cells)]
        b_rec = [Cat(recm[u], c_lane[u]) for u in range(Dm)]
        merged = []
        merged_cmp = []
        for j in range(k):
            cand = []
            for i in range(j + 1):  # cell i moves down by the mm lanes that beat it
                mm = j - i
                if mm > Dm:
                    continue
                c = vm  # without a beat in PM every cell stays
                if mm > 0:
                    c = c & g[i][mm - 1]
                if mm < Dm:
                    c = c & ~g[i][mm]
                if mm == 0:
                    c = c | ~vm
                cand.append((c, a_rec[i]))
            for t in range(min(j + 1, Dm)):  # lane t moves down by the n cells that beat it
                n = j - t
                c = vm & g[n][t]
                if n > 0:
                    c = c & ~g[n - 1][t]
                cand.append((c, b_rec[t]))
            sel = Signal(rec_w + Dm, name=f"merged_{j}")
            m.d.comb += sel.eq(onehot(cand))
            merged.append(sel[:rec_w])
            merged_cmp.append(sel[rec_w:])

        def g_next(valid, cmp):  # lane t of PN beats a cell holding (valid, cmp bits)
            return [bn_valid[t] & (~(valid & ~firstn) | cmp[t]) for t in range(Dm)]

        with m.If(adv):
            m.d.sync += [cells[i].eq(merged[i]) for i in range(k)]
            for i in range(k):
                m.d.sync += [g[i][t].eq(b) for t, b in
                             enumerate(g_next(fields(merged[i])[3], merged_cmp[i]))]

        # ---------------- hold / slot / out hand-offs
        # Every move is decided from registers only (the out queue is two deep),
        # so ``o.ready`` reaches no further than the out registers.
        hold_v, hold_end = Signal(), Signal()
        hold = [Signal(ib + 8 + 1, name=f"hold_{w}") for w in range(k)]  # idx, x, valid
        sl_v, sl_end = Signal(), Signal()
        o_v, o_end = Signal(), Signal()  # out head: the position being emitted
        o_rem = Signal(range(k + 1))
        ob_v, ob_end = Signal(), Signal()  # out tail: the next position, sorted
        ob_count = Signal(range(k + 1))
        o_last = Signal()
        m.d.comb += o_last.eq(o_rem <= R)
        head_free, sl_move, hold_move = (Signal(name=n) for n in (
            "head_free", "sl_move", "hold_move"))
        m.d.comb += [
            head_free.eq(~o_v | (self.o.ready & o_last)),
            sl_move.eq(sl_v & ~ob_v),
            hold_move.eq(hold_v & (~sl_v | ~ob_v)),
            adv.eq(~(vm & lastm) | ~hold_v | ~sl_v | ~ob_v),
        ]
        with m.If(hold_move):
            m.d.sync += hold_v.eq(0)
        with m.If(adv & vm & lastm):
            m.d.sync += [hold_v.eq(1), hold_end.eq(endm)]
            m.d.sync += [hold[j].eq(merged[j][kb:]) for j in range(k)]

        # ---------------- slot: place of each non-zero winner in channel order
        h_idx = [h[:ib] for h in hold]
        h_x = [h[ib:ib + 8] for h in hold]
        h_nz = [h[ib + 8] & (h[ib:ib + 8] != 0) for h in hold]
        sb = bits(k + 1)
        sl_slot = [Signal(sb, name=f"sl_slot_{w}") for w in range(k)]
        sl_ent = [Signal(ib + 8, name=f"sl_ent_{w}") for w in range(k)]
        sl_nz = [Signal(name=f"sl_nz_{w}") for w in range(k)]
        sl_count = Signal(range(k + 1))
        with m.If(sl_move):
            m.d.sync += sl_v.eq(0)
        with m.If(hold_move):
            m.d.sync += [sl_v.eq(1), sl_end.eq(hold_end), sl_count.eq(popcount(h_nz))]
            for w in range(k):
                before = [h_nz[u] & (h_idx[u] < h_idx[w]) for u in range(k) if u != w]
                m.d.sync += [sl_slot[w].eq(popcount(before)), sl_ent[w].eq(Cat(h_idx[w], h_x[w])),
                             sl_nz[w].eq(h_nz[w])]

        # ---------------- out: winners sorted by channel, shifted out R per beat
        sorted_ = [Signal(ib + 8, name=f"sorted_{s}") for s in range(k)]
        m.d.comb += [sorted_[s].eq(onehot((sl_nz[w] & (sl_slot[w] == s), sl_ent[w])
                                          for w in range(k))) for s in range(k)]
        o_ent = [Signal(ib + 8, name=f"o_ent_{s}") for s in range(k)]
        ob_ent = [Signal(ib + 8, name=f"ob_ent_{s}") for s in range(k)]
        with m.If(self.o.ready & o_v):
            with m.If(o_last):
                m.d.sync += o_v.eq(0)
            with m.Else():
                m.d.sync += o_rem.eq(o_rem - R)
                m.d.sync += [o_ent[s].eq(o_ent[s + R] if s + R < k else 0) for s in range(k)]
        with m.If(head_free & ob_v):
            m.d.sync += [o_v.eq(1), o_end.eq(ob_end), o_rem.eq(ob_count), ob_v.eq(0)]
            m.d.sync += [o_ent[s].eq(ob_ent[s]) for s in range(k)]
        with m.Elif(head_free & sl_move):
            m.d.sync += [o_v.eq(1), o_end.eq(sl_end), o_rem.eq(sl_count)]
            m.d.sync += [o_ent[s].eq(sorted_[s]) for s in range(k)]
        with m.Elif(sl_move):
            m.d.sync += [ob_v.eq(1), ob_end.eq(sl_end), ob_count.eq(sl_count)]
            m.d.sync += [ob_ent[s].eq(sorted_[s]) for s in range(k)]
        op = self.o.payload
        m.d.comb += [
            self.o.valid.eq(o_v),
            op.count.eq(Mux(o_last, o_rem, R)),
            op.last.eq(o_last),
            op.end.eq(o_end & o_last),
        ]
        for r in range(min(R, k)):
            m.d.comb += [op.entries[r].index.eq(o_ent[r][:ib]),
                         op.entries[r].value.eq(o_ent[r][ib:])]
        return m


    def _elaborate_serial(self) -> Module:
        """``D = 1``: insertion into ``k`` sorted cells, winners emitted one per cycle."""
        m = Module()
        C, k, R = self.channels, self.k, self.entries
        ib, kb = self.index_bits, self.key_bits
        keys = _Keys(self.boost, 1, C)
        if keys.rom is not None:
            m.submodules.boost_rom = keys.rom
        adv = Signal()
        p = self.i.payload
        m.d.comb += self.i.ready.eq(adv)

        # ---------------- P0: input register; the channel's boost is read alongside
        ch = Signal(range(max(C, 2)))  # channel of the element being accepted
        with m.If(self.i.valid & adv):
            m.d.sync += ch.eq(Mux(p.last | (ch == C - 1), 0, ch + 1))
        v0, last0, end0 = Signal(), Signal(), Signal()
        ch0 = Signal.like(ch)
        x0 = Signal(signed(8))
        blane = keys.lanes(m, ch, adv)
        with m.If(adv):
            m.d.sync += v0.eq(self.i.valid)
            with m.If(self.i.valid):
                m.d.sync += [ch0.eq(ch), x0.eq(p.data[0]), last0.eq(p.last), end0.eq(p.end)]

        # ---------------- P1: key
        v1, last1, end1, first1 = Signal(), Signal(), Signal(), Signal()
        key1 = Signal(kb)
        idx1 = Signal(ib)
        x1 = Signal(signed(8))
        with m.If(adv):
            m.d.sync += [v1.eq(v0), last1.eq(last0), end1.eq(end0), first1.eq(ch0 == 0),
                         key1.eq(keys.ukey(x0, None if blane is None else blane[0])),
                         idx1.eq(ch0), x1.eq(x0)]

        # ---------------- cells: the best k so far, by key (desc), ties to the lower channel
        rec_w = kb + ib + 8 + 1  # key, channel, value, valid
        cells = [Signal(rec_w, name=f"cell_{i}") for i in range(k)]
        valid = [c[rec_w - 1] & ~first1 for c in cells]  # a new position starts empty
        # ge[i]: cell i keeps its place (it holds a lower channel, so it wins ties)
        ge = [valid[i] & (cells[i][:kb] >= key1) for i in range(k)]
        new = Cat(key1, idx1, x1, Const(1, 1))
        inserted = []
        for i in range(k):
            below = Cat(cells[i - 1][:rec_w - 1], valid[i - 1]) if i else new
            take_new = ~ge[i] & (ge[i - 1] if i else Const(1, 1))
            inserted.append(Mux(ge[i], Cat(cells[i][:rec_w - 1], valid[i]),
                                Mux(take_new, new, below)))

        # ---------------- hold: the finished position's winners, emitted by channel
        # Loaded from the cells the cycle after the position's last insertion (``pend``),
        # while the next position's first element goes in: the insertion logic then
        # drives only the cells (on iCE40 a LUT and its flip-flop share a cell only
        # when the LUT drives nothing else), and the channel order of the winners is
        # compared once, into registers, instead of on every emission.
        pend, pend_end = Signal(), Signal()
        hold_v, hold_end = Signal(), Signal()
        h_idx = [Signal(ib, name=f"h_idx_{i}") for i in range(k)]
        h_x = [Signal(signed(8), name=f"h_x_{i}") for i in range(k)]
        # lower[(i, j)], i < j: cell i's channel is lower than cell j's (the channels of
        # valid cells differ, so j's is lower when it is not; invalid cells never remain)
        lower = {(i, j): Signal(name=f"lower_{i}_{j}") for i in range(k) for j in range(i + 1, k)}
        rem = Signal(k)  # non-zero winners not yet emitted
        m.d.comb += adv.eq(~(v1 & last1 & (hold_v | pend)))
        with m.If(adv & v1):
            m.d.sync += [cells[i].eq(inserted[i]) for i in range(k)]
        m.d.sync += pend.eq(adv & v1 & last1)
        with m.If(adv & v1 & last1):
            m.d.sync += pend_end.eq(end1)
        with m.If(pend):
            m.d.sync += [hold_v.eq(1), hold_end.eq(pend_end)]
            c_idx = [c[kb:kb + ib] for c in cells]
            for i, c in enumerate(cells):
                x = c[kb + ib:kb + ib + 8]
                m.d.sync += [h_idx[i].eq(c_idx[i]), h_x[i].eq(x)]
            m.d.sync += [lower[i, j].eq(c_idx[i] < c_idx[j]) for i, j in lower]
            m.d.sync += rem.eq(Cat(*[c[rec_w - 1] & (c[kb + ib:kb + ib + 8] != 0)
                                     for c in cells]))

        # The lowest remaining channel: the cell that comes before every other remaining one.
        def before(i, j):
            return lower[i, j] if i < j else ~lower[j, i]

        sel = Cat(*[rem[i] & Cat(*[~rem[j] | before(i, j) for j in range(k) if j != i]).all()
                    for i in range(k)])
        sel_idx = onehot((sel[i], h_idx[i]) for i in range(k))
        sel_x = onehot((sel[i], h_x[i]) for i in range(k))
        rem_next = Signal(k)
        m.d.comb += rem_next.eq(rem & ~sel)

        # ---------------- beat being filled, then the output register
        out = _SerialOutput(m, self.o, R, k, ib)
        entry = Cat(sel_idx, sel_x)
        done = Signal()  # this entry is the last: one winner remains (from rem, not sel)
        m.d.comb += done.eq((rem & (rem - 1)) == 0)
        with m.If(hold_v):
            with m.If(rem == 0):  # no non-zero winner: one empty beat
                with m.If(out.free):
                    out.send(0, [0] * R, 1, hold_end)
                    m.d.sync += hold_v.eq(0)
            with m.Elif(done | (out.b_cnt == R - 1)):  # the entry completes a beat
                with m.If(out.free):
                    out.send(out.b_cnt + 1, out.with_entry(entry), done, done & hold_end)
                    m.d.sync += [out.b_cnt.eq(0), rem.eq(rem_next)]
                    with m.If(done):
                        m.d.sync += hold_v.eq(0)
            with m.Else():
                out.append(entry)
                m.d.sync += rem.eq(rem_next)
        return m


class GlobalKWTA(wiring.Component):
    """k-winners-take-all over a whole frame: a vector or a whole (H, W, C) map.

    A frame is ``size`` (``N``) elements in ``N / G`` groups of ``group``
    (``G``) elements: a vector is one group (``G = N``), a map one group of
    ``C`` channels per position (``N = H * W * C``). Exactly ``k`` winners
    per frame, ties to the lower flat index (position * G + channel). The
    output has one sparse group per input group (empty ones included), index
    = element within the group.

    Algorithm
    ---------
    Keys are offset-binary integers of ``P = ceil(kb / 8)`` radix digits of 8
    bits (``P = 1`` without boost, 2 for boost up to 256, 3 up to 65535).

    1. *Write*: the frame goes into one half of a double-buffered frame
       memory (one word of ``D`` values per beat) while ``D`` per-lane
       256-bin histograms count the keys' top digit (a three-stage
       read-modify-write that forwards the counts still in flight: repeated
       bins on consecutive cycles need no stall).
    2. *Scan*: the bins are read from the top down, the ``D`` lanes summed;
       the first bin where the running count reaches the number still
       needed is the threshold digit; every bin is cleared as it is read.
    3. *Refine* (only when ``P > 1``): the stored frame is read again and
       the next digit is counted for keys whose higher digits equal the
       threshold prefix; then scan again. After ``P`` digits the threshold
       key ``T`` is known, and the quota ``q`` = k - (keys above ``T``).
    4. *Emit*: the stored frame is read once more; an element wins if its
       key is above ``T``, or equal to ``T`` while fewer than ``q`` equal
       keys were seen before it in flat order. Non-zero winners are packed
       ``R`` per output beat, one group per input group.

    Emission of frame ``f`` overlaps writing frame ``f + 1`` into the other
    buffer half; writing waits for the histograms, i.e. for the scans (and
    refine passes) of frame ``f``.

    With ``serial=True`` (one element per beat, ``D = 1``; for the smallest
    parts, where area counts more than speed) the unit is built without
    histograms: the frame is written into one half
    of a double-buffered memory, then read ``kb`` times (the keys computed
    as it is read) to find the threshold key bit by bit from the top (keep
    bit ``b`` when at least ``k`` keys are ``>=`` the threshold with it
    set), once more to count the keys above it (the quota of equal keys),
    and once to emit.
    ``(kb + 2) * (N + 1) + 1`` cycles per frame; the next frame is written
    meanwhile.

    Throughput
    ----------
    With ``W = (N / G) * ceil(G / D)`` beats per frame, a frame takes
    ``P * (W + 267)`` cycles in steady state (:attr:`cycles_per_frame`): the
    write (``W``, one beat per cycle), ``P`` scans of 256 bins plus 11 cycles
    of pipeline and hand-off each, and ``P - 1`` refine reads (``W`` each).
    Emission (``W`` cycles plus one per beat that fills up before its group
    ends) overlaps the next frame's write and is hidden. Measured (and
    asserted in ``tests/hw/test_kwta.py``): 455 cycles per frame at N=1500,
    D=8 without boost (the target ``2N/D + 256`` is 631); at a 3x3x16 map,
    D=8: 285, 570 and 855 cycles for 8-, 16- and 24-bit keys. Latency from
    a frame's last input beat to its first output beat: about ``P * 267 +
    (P - 1) * W`` plus the read of the first group (291 cycles at N=1500).

    Timing (yosys ``synth_ecp5`` + nextpnr-ecp5, LFE5U-85F, out of context):
    116 MHz at N=1500, k=150, D=8, R=8 (2,400 LUT4, 2,100 FF, 10 DP16KD);
    113 MHz for a 3x3x16 map with 16-bit keys. Every block RAM output is
    registered before use; the histogram increment forwards the two counts
    not yet visible to a read.

    Parameters
    ----------
    size : int
        ``N``, elements per frame.
    k : int
        Winners per frame, 1 to ``N``.
    group : int, optional
        ``G``, elements per group; must divide ``N`` (default ``N``: a vector).
    width : int
        ``D``, elements per input beat.
    entries : int
        ``R``, entries per output beat (1 to 64).
    boost : sequence of int, optional
        ``G`` integers from 1 to 65535: one per unit of a vector, one per
        channel of a map.
    serial : bool
        The small, slow build (see Algorithm); needs ``width`` 1.

    Members
    -------
    i : In(stream.Signature(dense_layout(D, signed(8))))
    o : Out(stream.Signature(sparse_layout(R, bits(G), signed(8))))

    Raises
    ------
    ValueError
        A parameter is not an integer in its range, ``group`` does not
        divide ``size``, or ``boost`` has the wrong length or a bad value.
    """

    SCAN_OVERHEAD = 11  # cycles of pipeline and hand-off around each scan

    def __init__(self, size: int, k: int, *, group: int | None = None, width: int = 8,
                 entries: int = 8, boost=None, serial: bool = False):
        check_int("size", size, 1)
        check_int("k", k, 1, size)
        group = size if group is None else group
        check_int("group", group, 1, size)
        if size % group:
            raise ValueError(f"group must divide size {size}, got {group!r}")
        check_int("width (D)", width, 1)
        check_int("entries (R)", entries, 1, 64)
        self.size, self.k, self.group, self.width, self.entries = size, k, group, width, entries
        if serial and width != 1:
            raise ValueError(f"serial needs width (D) 1, got {width!r}")
        self._serial = bool(serial)
        self.boost = _check_boost(boost, group, "unit or channel")
        self.positions = size // group
        self.beats = -(-group // width)  # beats per group
        self.words = self.positions * self.beats  # beats per frame
        self.index_bits = bits(group)
        self.key_bits = key_bits(self.boost)
        self.digits = -(-self.key_bits // 8)
        self.in_layout = dense_layout(width, signed(8))
        self.out_layout = sparse_layout(entries, self.index_bits, signed(8))
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    @property
    def dsps(self) -> int:
        """Multipliers of the keys ``x * boost``: one per lane with boost, else none."""
        return self.width if self.boost is not None else 0

    @property
    def serial(self) -> bool:
        """Built as the serial threshold search (``serial=True``, one element per beat)."""
        return self._serial

    @property
    def cycles_per_frame(self) -> int:
        """Steady-state cycles per frame when emission is hidden (see Throughput)."""
        if self.serial:  # kb search passes, the quota pass and the emission, N + 1 each
            return (self.key_bits + 2) * (self.size + 1) + 1
        return self.digits * (self.words + 256 + self.SCAN_OVERHEAD)

    def elaborate(self, platform):
        if self.serial:
            return self._elaborate_serial()
        m = Module()
        N, k, G, D, R = self.size, self.k, self.group, self.width, self.entries
        BG, W, P = self.beats, self.words, self.digits
        ib, kb = self.index_bits, self.key_bits
        KP = 8 * P
        cnt = bits(N + 1)
        lane_cnt = bits(W + 1)
        keys = _Keys(self.boost, D, BG)
        if keys.rom is not None:
            m.submodules.boost_rom = keys.rom

        buf = Memory(shape=unsigned(D * 8), depth=2 * W, init=[])
        m.submodules.buf = buf
        buf_w, buf_r = buf.write_port(), buf.read_port()
        hist_w, hist_r = [], []
        for d in range(D):
            h = Memory(shape=unsigned(lane_cnt), depth=256, init=[])
            m.submodules[f"hist{d}"] = h
            wp = h.write_port()
            hist_w.append(wp)
            hist_r.append(h.read_port())

        def ukey_p(x, b):
            u = keys.ukey(x, b)
            return Cat(u, Const(0, KP - kb)) if KP > kb else u

        # ================= writer: frame -> buffer, top digit -> histograms
        filled = Signal()  # a written frame owns the histograms
        wslot = Signal()
        wword = Signal(range(max(W, 2)))
        wbg = Signal(range(max(BG, 2)))
        take = Signal()
        p = self.i.payload
        m.d.comb += [self.i.ready.eq(~filled), take.eq(self.i.valid & ~filled)]
        m.d.comb += [buf_w.addr.eq(wslot * W + wword), buf_w.data.eq(p.data.as_value()),
                     buf_w.en.eq(take)]
        fslot = Signal()  # buffer half of the frame being selected
        with m.If(take):
            with m.If(p.end):
                m.d.sync += [wword.eq(0), wbg.eq(0), wslot.eq(~wslot), fslot.eq(wslot),
                             filled.eq(1)]
            with m.Else():
                m.d.sync += wword.eq(wword + 1)
                with m.If(p.last):
                    m.d.sync += wbg.eq(0)
                with m.Elif(wbg != BG - 1):
                    m.d.sync += wbg.eq(wbg + 1)
        w0_v = Signal()
        w0_bg = Signal.like(wbg)
        w0_x = [Signal(signed(8), name=f"w0_x{d}") for d in range(D)]
        wboost = keys.lanes(m, wbg, 1)
        m.d.sync += w0_v.eq(take)
        with m.If(take):
            m.d.sync += [w0_bg.eq(wbg)] + [w0_x[d].eq(p.data[d]) for d in range(D)]
        # WB: register the boost ROM output (block RAM) before the multipliers
        wb_v = Signal()
        wb_bg = Signal.like(wbg)
        wb_x = [Signal(signed(8), name=f"wb_x{d}") for d in range(D)]
        wb_b = None if wboost is None else [Signal(keys.bb, name=f"wb_b{d}") for d in range(D)]
        m.d.sync += [wb_v.eq(w0_v), wb_bg.eq(w0_bg)] + [wb_x[d].eq(w0_x[d]) for d in range(D)]
        if wb_b is not None:
            m.d.sync += [wb_b[d].eq(wboost[d]) for d in range(D)]
        w1_v = Signal()
        w1_key = [Signal(KP, name=f"w1_key{d}") for d in range(D)]
        w1_lv = [Signal(name=f"w1_lv{d}") for d in range(D)]
        m.d.sync += w1_v.eq(wb_v)
        for d in range(D):
            m.d.sync += [w1_key[d].eq(ukey_p(wb_x[d], None if wb_b is None else wb_b[d])),
                         w1_lv[d].eq(wb_bg * D + d < G)]

        # ================= reader: refine passes and emission
        REFINE, EMIT = 0, 1
        rd_mode = Signal()
        rd_active = Signal()
        rd_slot = Signal()
        rd_word = Signal(range(max(W, 2)))
        rd_bg = Signal(range(max(BG, 2)))
        adv_r = Signal()
        m.d.comb += [buf_r.addr.eq(rd_slot * W + rd_word), buf_r.en.eq(adv_r)]
        rboost = keys.lanes(m, rd_bg, adv_r)
        r1_v, r1_glast, r1_fend = Signal(), Signal(), Signal()
        r1_bg = Signal.like(rd_bg)
        with m.If(adv_r):
            m.d.sync += [r1_v.eq(rd_active), r1_bg.eq(rd_bg), r1_glast.eq(rd_bg == BG - 1),
                         r1_fend.eq(rd_word == W - 1)]
            with m.If(rd_active):
                with m.If(rd_word == W - 1):
                    m.d.sync += [rd_active.eq(0), rd_word.eq(0), rd_bg.eq(0)]
                with m.Else():
                    m.d.sync += [rd_word.eq(rd_word + 1),
                                 rd_bg.eq(Mux(rd_bg == BG - 1, 0, rd_bg + 1))]
        # R1B: register the buffer and boost ROM outputs (block RAM) before the multipliers
        rb_v, rb_glast, rb_fend = Signal(), Signal(), Signal()
        rb_bg = Signal.like(rd_bg)
        rb_x = [Signal(signed(8), name=f"rb_x{d}") for d in range(D)]
        rb_b = None if rboost is None else [Signal(keys.bb, name=f"rb_b{d}") for d in range(D)]
        with m.If(adv_r):
            m.d.sync += [rb_v.eq(r1_v), rb_bg.eq(r1_bg), rb_glast.eq(r1_glast),
                         rb_fend.eq(r1_fend)]
            m.d.sync += [rb_x[d].eq(buf_r.data[8 * d:8 * d + 8]) for d in range(D)]
            if rb_b is not None:
                m.d.sync += [rb_b[d].eq(rboost[d]) for d in range(D)]
        r2_v, r2_glast, r2_fend = Signal(), Signal(), Signal()
        r2_bg = Signal.like(rd_bg)
        r2_key = [Signal(KP, name=f"r2_key{d}") for d in range(D)]
        r2_x = [Signal(signed(8), name=f"r2_x{d}") for d in range(D)]
        r2_lv = [Signal(name=f"r2_lv{d}") for d in range(D)]
        with m.If(adv_r):
            m.d.sync += [r2_v.eq(rb_v), r2_bg.eq(rb_bg), r2_glast.eq(rb_glast),
                         r2_fend.eq(rb_fend)]
            for d in range(D):
                m.d.sync += [r2_key[d].eq(ukey_p(rb_x[d], None if rb_b is None else rb_b[d])),
                             r2_x[d].eq(rb_x[d]), r2_lv[d].eq(rb_bg * D + d < G)]
        rc_v, r3_v = Signal(), Signal()  # emission only: the word's winners (below)
        rd_idle = Signal()
        m.d.comb += rd_idle.eq(~rd_active & ~r1_v & ~rb_v & ~r2_v & ~rc_v & ~r3_v)

        # ================= histogram update (writer's top digit or a refine pass)
        sel_pass = Signal(range(max(P, 2)))
        prefix = Signal(KP)  # threshold digits found so far (right-aligned)
        hin_v = Signal()
        hin_digit = [Signal(8, name=f"hin_digit{d}") for d in range(D)]
        hin_en = [Signal(name=f"hin_en{d}") for d in range(D)]
        refining = Signal()
        m.d.comb += refining.eq((rd_mode == REFINE) & r2_v)
        with m.If(refining):
            m.d.comb += hin_v.eq(1)
            with m.Switch(sel_pass):
                for q in range(1, P):
                    with m.Case(q):
                        hi = 8 * (P - q)
                        for d in range(D):
                            m.d.comb += [
                                hin_digit[d].eq(r2_key[d][hi - 8:hi]),
                                hin_en[d].eq(r2_lv[d] & (r2_key[d][hi:] == prefix[:8 * q])),
                            ]
        with m.Else():
            m.d.comb += hin_v.eq(w1_v)
            for d in range(D):
                m.d.comb += [hin_digit[d].eq(w1_key[d][KP - 8:]), hin_en[d].eq(w1_v & w1_lv[d])]
        # Read-modify-write, block RAM output registered: read at H0, data
        # registered at H1, bin + 1 written at H2. The two previous writes are
        # not yet visible to a read, so their counts are forwarded (P1, P2).
        h1_v, h2_v = Signal(), Signal()
        h1_addr = [Signal(8, name=f"h1_addr{d}") for d in range(D)]
        h1_inc = [Signal(name=f"h1_inc{d}") for d in range(D)]
        h2_addr = [Signal(8, name=f"h2_addr{d}") for d in range(D)]
        h2_inc = [Signal(name=f"h2_inc{d}") for d in range(D)]
        h2_data = [Signal(lane_cnt, name=f"h2_data{d}") for d in range(D)]
        h2_new = [Signal(lane_cnt, name=f"h2_new{d}") for d in range(D)]
        p1_addr = [Signal(8, name=f"p1_addr{d}") for d in range(D)]
        p1_inc = [Signal(name=f"p1_inc{d}") for d in range(D)]
        p1_val = [Signal(lane_cnt, name=f"p1_val{d}") for d in range(D)]
        p2_addr = [Signal(8, name=f"p2_addr{d}") for d in range(D)]
        p2_inc = [Signal(name=f"p2_inc{d}") for d in range(D)]
        p2_val = [Signal(lane_cnt, name=f"p2_val{d}") for d in range(D)]
        m.d.sync += [h1_v.eq(hin_v), h2_v.eq(h1_v)]
        for d in range(D):
            m.d.sync += [h1_addr[d].eq(hin_digit[d]), h1_inc[d].eq(hin_v & hin_en[d]),
                         h2_addr[d].eq(h1_addr[d]), h2_inc[d].eq(h1_inc[d]),
                         h2_data[d].eq(hist_r[d].data),
                         p1_addr[d].eq(h2_addr[d]), p1_inc[d].eq(h2_inc[d]),
                         p1_val[d].eq(h2_new[d]),
                         p2_addr[d].eq(p1_addr[d]), p2_inc[d].eq(p1_inc[d]),
                         p2_val[d].eq(p1_val[d])]
            base = Mux(p1_inc[d] & (p1_addr[d] == h2_addr[d]), p1_val[d],
                       Mux(p2_inc[d] & (p2_addr[d] == h2_addr[d]), p2_val[d], h2_data[d]))
            m.d.comb += h2_new[d].eq(base + 1)

        # ================= selector: scans, refine passes, hand-off to emission
        scanning = Signal()
        sc_issue = Signal()
        sc_bin = Signal(8)
        sc1_v, scb_v, sc2_v = Signal(), Signal(), Signal()
        sc1_bin, scb_bin, sc2_bin = Signal(8), Signal(8), Signal(8)
        scb_lane = [Signal(lane_cnt, name=f"scb_lane{d}") for d in range(D)]
        sc2_sum = Signal(cnt)
        cum = Signal(cnt)
        need = Signal(cnt)
        found = Signal()
        f_bin = Signal(8)
        f_above = Signal(cnt)
        for d in range(D):
            m.d.comb += [
                hist_r[d].addr.eq(Mux(scanning, sc_bin, hin_digit[d])),
                hist_r[d].en.eq(1),
                hist_w[d].addr.eq(Mux(scanning, sc1_bin, h2_addr[d])),
                hist_w[d].data.eq(Mux(scanning, 0, h2_new[d])),
                hist_w[d].en.eq(Mux(scanning, sc1_v, h2_inc[d])),
            ]
        m.d.sync += [sc1_v.eq(sc_issue), sc1_bin.eq(sc_bin), scb_v.eq(sc1_v),
                     scb_bin.eq(sc1_bin), sc2_v.eq(scb_v), sc2_bin.eq(scb_bin),
                     sc2_sum.eq(sum(scb_lane))]
        m.d.sync += [scb_lane[d].eq(hist_r[d].data) for d in range(D)]
        with m.If(sc_issue):
            with m.If(sc_bin == 0):
                m.d.sync += sc_issue.eq(0)
            with m.Else():
                m.d.sync += sc_bin.eq(sc_bin - 1)
        with m.If(sc2_v & ~found):
            with m.If(cum + sc2_sum >= need):
                m.d.sync += [found.eq(1), f_bin.eq(sc2_bin), f_above.eq(cum)]
            with m.Else():
                m.d.sync += cum.eq(cum + sc2_sum)

        thr = Signal(KP)  # emission: threshold key
        qrem = Signal(cnt)  # emission: keys equal to the threshold that still win

        def start_scan():
            m.d.sync += [scanning.eq(1), sc_issue.eq(1), sc_bin.eq(255), cum.eq(0),
                         found.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(filled & ~w0_v & ~wb_v & ~w1_v & ~h1_v & ~h2_v):
                    m.d.sync += [sel_pass.eq(0), prefix.eq(0), need.eq(k)]
                    start_scan()
                    m.next = "SCAN"
            with m.State("SCAN"):
                with m.If(sc2_v & (sc2_bin == 0)):
                    m.d.sync += scanning.eq(0)
                    m.next = "FINISH"
            with m.State("FINISH"):
                m.d.sync += [prefix.eq(Cat(f_bin, prefix[:KP - 8])), need.eq(need - f_above)]
                with m.If(sel_pass == P - 1):
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += sel_pass.eq(sel_pass + 1)
                    m.next = "WAIT_READER"
            with m.State("WAIT_READER"):
                with m.If(rd_idle):
                    m.d.sync += [rd_mode.eq(REFINE), rd_active.eq(1), rd_slot.eq(fslot),
                                 rd_word.eq(0), rd_bg.eq(0)]
                    m.next = "REFINE"
            with m.State("REFINE"):
                with m.If(rd_idle & ~h1_v & ~h2_v):
                    start_scan()
                    m.next = "SCAN"
            with m.State("DONE"):
                with m.If(rd_idle):
                    m.d.sync += [rd_mode.eq(EMIT), rd_active.eq(1), rd_slot.eq(fslot),
                                 rd_word.eq(0), rd_bg.eq(0), thr.eq(prefix), qrem.eq(need),
                                 filled.eq(0)]
                    m.next = "IDLE"

        # ================= emission
        # RC: compare with the threshold: above, equal (and the equal ones before
        # each lane); only non-zero values can be output winners
        rc_glast, rc_fend = Signal(), Signal()
        rc_gt, rc_eq = Signal(D), Signal(D)
        rc_nz = Signal(D)
        rb_eq = bits(D + 1)
        rc_pre = [Signal(rb_eq, name=f"rc_pre{d}") for d in range(D)]
        rc_neq = Signal(rb_eq)
        rc_ent = [Signal(ib + 8, name=f"rc_ent{d}") for d in range(D)]
        eq = [r2_lv[d] & (r2_key[d] == thr) for d in range(D)]
        with m.If(adv_r):
            m.d.sync += rc_v.eq(r2_v & (rd_mode == EMIT))
            with m.If(r2_v & (rd_mode == EMIT)):
                m.d.sync += [
                    rc_glast.eq(r2_glast), rc_fend.eq(r2_fend), rc_eq.eq(Cat(*eq)),
                    rc_gt.eq(Cat(*[r2_lv[d] & (r2_key[d] > thr) for d in range(D)])),
                    rc_nz.eq(Cat(*[r2_x[d] != 0 for d in range(D)])),
                    rc_neq.eq(popcount(eq)),
                ]
                m.d.sync += [rc_pre[d].eq(popcount(eq[:d])) for d in range(D)]
                m.d.sync += [rc_ent[d].eq(Cat((r2_bg * D + d)[:ib], r2_x[d])) for d in range(D)]
        # R3: the winners: above the threshold, or equal while the quota lasts
        win = [(rc_gt[d] | (rc_eq[d] & (rc_pre[d] < qrem))) & rc_nz[d] for d in range(D)]
        r3_glast, r3_fend = Signal(), Signal()
        r3_win = Signal(D)
        r3_ent = [Signal(ib + 8, name=f"r3_ent{d}") for d in range(D)]
        with m.If(adv_r):
            m.d.sync += r3_v.eq(rc_v)
            with m.If(rc_v):
                m.d.sync += [r3_glast.eq(rc_glast), r3_fend.eq(rc_fend), r3_win.eq(Cat(*win)),
                             qrem.eq(Mux(rc_neq >= qrem, 0, qrem - rc_neq))]
                m.d.sync += [r3_ent[d].eq(rc_ent[d]) for d in range(D)]

        # E3 (the word being packed) and E4 (the next word): a two-deep queue, so
        # the reader's stall is a register (``adv_r``) and ``o.ready`` stops here.
        rk = bits(D + 1)

        def e_regs(tag):
            return dict(v=Signal(name=f"{tag}_v"), glast=Signal(name=f"{tag}_glast"),
                        fend=Signal(name=f"{tag}_fend"), mask=Signal(D, name=f"{tag}_mask"),
                        n=Signal(rk, name=f"{tag}_n"),
                        rank=[Signal(rk, name=f"{tag}_rank{d}") for d in range(D)],
                        ent=[Signal(ib + 8, name=f"{tag}_ent{d}") for d in range(D)])

        def e_load(dst, src):
            return ([dst["v"].eq(1), dst["glast"].eq(src["glast"]), dst["fend"].eq(src["fend"]),
                     dst["mask"].eq(src["mask"]), dst["n"].eq(src["n"])] +
                    [dst["rank"][d].eq(src["rank"][d]) for d in range(D)] +
                    [dst["ent"][d].eq(src["ent"][d]) for d in range(D)])

        e3, e4 = e_regs("e3"), e_regs("e4")
        new_e = dict(glast=r3_glast, fend=r3_fend, mask=r3_win, n=popcount(r3_win),
                     rank=[popcount(r3_win[u] for u in range(d)) for d in range(D)], ent=r3_ent)
        m.d.comb += adv_r.eq((rd_mode == REFINE) | ~e4["v"])

        # staging beat S and output register O
        s_fill = Signal(range(R + 1))
        s_ent = [Signal(ib + 8, name=f"s_ent{j}") for j in range(R)]
        o_v, o_last, o_end = Signal(), Signal(), Signal()
        o_count = Signal(range(R + 1))
        o_ent = [Signal(ib + 8, name=f"o_ent{j}") for j in range(R)]
        o_free = Signal()
        m.d.comb += o_free.eq(~o_v | self.o.ready)
        with m.If(self.o.ready & o_v):
            m.d.sync += o_v.eq(0)

        pos = [Signal(range(R + D + 1), name=f"pos{d}") for d in range(D)]
        m.d.comb += [pos[d].eq(s_fill + e3["rank"][d]) for d in range(D)]
        placed = Cat(*[e3["mask"][d] & (pos[d] < R) for d in range(D)])
        s_new = [Mux(j < s_fill, s_ent[j],
                     onehot((e3["mask"][d] & (pos[d] == j), e3["ent"][d]) for d in range(D)))
                 for j in range(R)]
        total = Signal(range(R + D + 1))
        room = Signal(range(R + 1))
        m.d.comb += [total.eq(s_fill + e3["n"]), room.eq(R - s_fill)]
        e3_consume = Signal()
        with m.If(e3["v"]):
            with m.If((s_fill == R) & (e3["n"] != 0)):  # full beat, more to come: flush it
                with m.If(o_free):
                    m.d.sync += [o_v.eq(1), o_last.eq(0), o_end.eq(0), o_count.eq(R),
                                 s_fill.eq(0)] + [o_ent[j].eq(s_ent[j]) for j in range(R)]
            with m.Elif(total > R):  # the beat fills up; the rest of the word stays
                m.d.sync += [s_fill.eq(R), e3["mask"].eq(e3["mask"] & ~placed),
                             e3["n"].eq(e3["n"] - room)]
                m.d.sync += [e3["rank"][d].eq(e3["rank"][d] - room) for d in range(D)]
                m.d.sync += [s_ent[j].eq(s_new[j]) for j in range(R)]
            with m.Elif(e3["glast"]):  # the group ends: out with last
                with m.If(o_free):
                    m.d.comb += e3_consume.eq(1)
                    m.d.sync += [o_v.eq(1), o_last.eq(1), o_end.eq(e3["fend"]),
                                 o_count.eq(total), s_fill.eq(0)]
                    m.d.sync += [o_ent[j].eq(s_new[j]) for j in range(R)]
            with m.Else():
                m.d.comb += e3_consume.eq(1)
                m.d.sync += [s_fill.eq(total)] + [s_ent[j].eq(s_new[j]) for j in range(R)]
        take_new = Signal()
        m.d.comb += take_new.eq(adv_r & r3_v)
        with m.If(~e3["v"] | e3_consume):
            with m.If(e4["v"]):
                m.d.sync += e_load(e3, e4) + [e4["v"].eq(0)]
            with m.Elif(take_new):
                m.d.sync += e_load(e3, new_e)
            with m.Else():
                m.d.sync += e3["v"].eq(0)
        with m.Elif(take_new):
            m.d.sync += e_load(e4, new_e)

        op = self.o.payload
        m.d.comb += [self.o.valid.eq(o_v), op.count.eq(o_count), op.last.eq(o_last),
                     op.end.eq(o_end)]
        for j in range(R):
            m.d.comb += [op.entries[j].index.eq(o_ent[j][:ib]),
                         op.entries[j].value.eq(o_ent[j][ib:])]
        return m

    def _elaborate_serial(self) -> Module:
        """``D = 1``: bit-serial threshold search over a stored frame (see Algorithm)."""
        m = Module()
        N, k, G, R = self.size, self.k, self.group, self.entries
        ib, kb = self.index_bits, self.key_bits
        nb = bits(N)
        cnt_bits = bits(N + 1)
        keys = _Keys(self.boost, 1, G)
        if keys.rom is not None:
            m.submodules.boost_rom = keys.rom
        m.submodules.frames = mem = Memory(shape=unsigned(8), depth=2 << nb, init=[])
        wp = mem.write_port()
        rp = mem.read_port()
        full = Signal(2)  # a complete frame waits in that half
        full_set = Signal(2)
        full_clr = Signal(2)
        m.d.sync += full.eq((full | full_set) & ~full_clr)

        # ---------------- write: the values (keys are computed as the passes read them)
        p = self.i.payload
        wsel = Signal()  # the half being written
        wa = Signal(range(max(N, 2)))
        take = Signal()
        m.d.comb += [self.i.ready.eq(~full.bit_select(wsel, 1)),
                     take.eq(self.i.valid & self.i.ready),
                     wp.addr.eq(Cat(wa, wsel)), wp.data.eq(p.data[0]), wp.en.eq(take)]
        with m.If(take):
            with m.If(wa == N - 1):
                m.d.sync += [wa.eq(0), wsel.eq(~wsel)]
                m.d.comb += full_set.bit_select(wsel, 1).eq(1)
            with m.Else():
                m.d.sync += wa.eq(wa + 1)

        # ---------------- read passes over the half rsel
        rsel = Signal()
        busy = Signal()  # passes running on rsel
        bi = Signal(range(max(kb, 2)))  # threshold bit of a search pass
        kind = Signal(2)  # 0 search, 1 count above, 2 emit
        thr = Signal(kb)
        cand = Signal(kb)
        m.d.comb += cand.eq(thr | (Const(1, kb) << bi))
        count = Signal(cnt_bits)
        quota = Signal(cnt_bits)
        ra = Signal(range(max(N, 2)))
        issued = Signal()  # every address of this pass has been read
        d_v, d_last = Signal(), Signal()
        go = Signal()  # the element in d is processed this cycle
        advance = Signal()
        m.d.comb += [advance.eq(~d_v | go), rp.addr.eq(Cat(ra, rsel)), rp.en.eq(advance)]
        rg = Signal(range(max(G, 2)))  # element within its group of the address read
        with m.If(~busy & full.bit_select(rsel, 1)):
            m.d.sync += [busy.eq(1), kind.eq(0), bi.eq(kb - 1), thr.eq(0), count.eq(0),
                         ra.eq(0), rg.eq(0), issued.eq(0)]
        with m.If(advance):
            m.d.sync += [d_v.eq(busy & ~issued), d_last.eq(ra == N - 1)]
            with m.If(busy & ~issued):
                m.d.sync += rg.eq(Mux(rg == G - 1, 0, rg + 1))
                with m.If(ra == N - 1):
                    m.d.sync += [ra.eq(0), issued.eq(1)]
                with m.Else():
                    m.d.sync += ra.eq(ra + 1)
        # The boost is read with the value: the key is x * boost on every pass.
        blane = keys.lanes(m, rg, advance)
        x = rp.data.as_signed()
        key = Signal(kb)
        m.d.comb += key.eq(keys.ukey(x, None if blane is None else blane[0]))

        # ---------------- search and quota passes
        hit = Signal()
        m.d.comb += hit.eq(Mux(kind == 0, key >= cand, key > thr))
        total = Signal(cnt_bits)
        m.d.comb += total.eq(count + hit)
        eq_seen = Signal(cnt_bits)
        gi = Signal(range(max(G, 2)))
        with m.If(go & (kind != 2)):
            m.d.sync += count.eq(total)
            with m.If(d_last):  # the pass is over: decide, start the next one
                m.d.sync += [count.eq(0), issued.eq(0)]
                with m.If(kind == 0):
                    with m.If(total >= k):
                        m.d.sync += thr.eq(cand)
                    with m.If(bi == 0):
                        m.d.sync += kind.eq(1)
                    with m.Else():
                        m.d.sync += bi.eq(bi - 1)
                with m.Else():
                    m.d.sync += [quota.eq(k - total), kind.eq(2), eq_seen.eq(0), gi.eq(0)]

        # ---------------- emission: winners in flat order, one group per input group
        win = Signal()
        m.d.comb += win.eq((key > thr) | ((key == thr) & (eq_seen < quota)))
        has = Signal()
        m.d.comb += has.eq(win & (x != 0))
        gend = Signal()
        m.d.comb += gend.eq(gi == G - 1)
        # A full beat waits in b until the group shows another winner (then it goes
        # out, not last) or ends (then it is the group's last beat): canonical packing.
        out = _SerialOutput(m, self.o, R, k, ib)
        flush, flush_end = Signal(), Signal()  # b holds a group's last beat, to send
        spill = Signal()  # a winner arrives while b is full
        m.d.comb += spill.eq(has & (out.b_cnt == R))
        complete = Signal()  # this element sends a beat
        m.d.comb += complete.eq(gend | spill)
        m.d.comb += go.eq(d_v & ((kind != 2) | (~flush & (~complete | out.free))))
        entry = Cat(gi, x)
        with m.If(flush & out.free):
            out.send(out.b_cnt, out.with_entry(entry, 0), 1, flush_end)
            m.d.sync += [out.b_cnt.eq(0), flush.eq(0)]
        with m.If(go & (kind == 2)):
            m.d.sync += [eq_seen.eq(eq_seen + (key == thr)),
                         gi.eq(Mux(gend, 0, gi + 1))]
            with m.If(spill):  # the full beat goes; the winner starts the next one
                out.send(R, out.b_ent, 0, 0)
                m.d.sync += [out.b_ent[0].eq(entry), out.b_cnt.eq(1)]
                with m.If(gend):
                    m.d.sync += [flush.eq(1), flush_end.eq(d_last)]
            with m.Elif(gend):
                out.send(out.b_cnt + has, out.with_entry(entry, has), 1, d_last)
                m.d.sync += out.b_cnt.eq(0)
            with m.Elif(has):
                out.append(entry)
            with m.If(d_last):  # the frame is out: free its half
                m.d.sync += [busy.eq(0), rsel.eq(~rsel)]
                m.d.comb += full_clr.bit_select(rsel, 1).eq(1)
        return m
