"""The overlay engine's parts, each on its own in Amaranth's simulator."""

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.sim import Simulator

from cosparse.compiler import zoo
from cosparse.compiler.packer import engine_parameters, pack
from cosparse.hw.loader import LoadPort
from cosparse.hw.overlay import OverlayEngine
from cosparse.hw.overlay.banks import AccumulatorBanks
from cosparse.hw.overlay.common import word_layout
from cosparse.hw.overlay.drain import Drain
from cosparse.hw.overlay.memory import ReadMemory
from cosparse.hw.overlay.products import Products
from cosparse.hw.overlay.sequencer import Sequencer, row_table
from cosparse.hw.util import bits


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


class WithMemories(Elaboratable):
    """A ReadMemory with its memories beside it, as the engine holds them."""

    def __init__(self, part):
        self.part = part

    def elaborate(self, platform):
        m = Module()
        m.submodules.part = self.part
        for name, mem in self.part.memories.items():
            m.submodules[name] = mem
        return m


@pytest.mark.parametrize("bank_words, single_port, loadable", [
    (None, False, False), (None, False, True), (8, False, True), (8, False, False),
    (None, True, True)])
def test_read_memory_reads_and_loads(bank_words, single_port, loadable):
    """Every port reads its address ``latency`` cycles later (banks: 2), the data holds
    between reads (the address held), and the loader's writes land (a single port: at the loader's address)."""
    rng = np.random.default_rng(1)
    image = [int(v) for v in rng.integers(0, 1 << 12, 30)]
    load = LoadPort("weights", 12, 30, tuple(image)) if loadable else None
    reads = 1 if single_port else 2
    mem = ReadMemory("weights", 12, image, reads=reads, load=load, bank_words=bank_words,
                     single_port=single_port)
    assert mem.banked == (bank_words is not None) and mem.latency == 1 + mem.banked
    assert sorted(mem.memories) == (["weights_0", "weights_1", "weights_2", "weights_3"]
                                    if mem.banked else ["weights"])
    want = list(image)

    async def bench(ctx):
        if loadable:  # overwrite a few words
            for a in (0, 9, 29):
                want[a] = (a * 77) & 0xFFF
                ctx.set(mem.load.addr, a)
                ctx.set(mem.load.data, want[a])
                ctx.set(mem.load.en, 1)
                await ctx.tick()
            ctx.set(mem.load.en, 0)
        history, addrs = [], [0] * reads
        for _ in range(60):
            en = int(rng.integers(0, 2))
            if en:  # (the bank select follows the address: it holds between reads)
                addrs = [int(v) for v in rng.integers(0, 30, reads)]
            for r in range(reads):
                ctx.set(mem.addr[r], addrs[r])
            ctx.set(mem.en, en)
            await ctx.tick()
            history.append((en, addrs))
            last = [a for e, a in history[:len(history) - mem.latency + 1] if e]
            if last:
                assert [ctx.get(mem.data[r]) for r in range(reads)] == \
                    [want[a] for a in last[-1]]

    run(WithMemories(mem), bench)


def test_read_memory_rejects_a_deep_spram():
    load = LoadPort("weights", 16, 20000, (0,) * 20000, has_init=False)
    with pytest.raises(ValueError, match="16384"):
        ReadMemory("weights", 16, [0] * 20000, reads=1, load=load, spram=True)


def _sequencer_ops(beats, row_start, passes):
    """The ops a beat sequence makes: per op (addresses, live, values, group, end)."""
    ops = []
    for b in beats:
        entries = b["entries"][:b["count"]]
        n = [row_start[e["index"] + 1] - row_start[e["index"]] for e in entries]
        for beat in range(max(n + [1])):
            for p in range(passes):
                last = beat == max(n + [1]) - 1 and p == passes - 1
                ops.append(([(row_start[e["index"]] + beat) * passes + p for e in entries],
                            [beat < x for x in n], [e["value"] for e in entries],
                            bool(last and b["last"]), bool(b["end"])))
    return ops


@pytest.mark.parametrize("table", [False, True])
def test_sequencer_issues_each_rows_words_and_passes(table):
    """Under random input stalls and a drain that frees buffers late, the ops are each
    entry's row words times the passes, in order, into alternating buffers; no op goes
    to a full buffer or one whose last sum is held."""
    rng = np.random.default_rng(2)
    fan_in, passes, R = 12, 2, 3
    beats_per_row = rng.integers(1, 3, fan_in) if table else np.ones(fan_in, int)
    row_start = np.concatenate([[0], np.cumsum(beats_per_row)]).astype(np.int32)
    seq = Sequencer(R, row_start, passes)
    assert seq.table == table
    width, image = row_table(row_start)
    table_mem = ReadMemory("rows", width, image, reads=R) if table else None
    groups = [sorted(rng.choice(fan_in, int(rng.integers(0, fan_in)), replace=False).tolist())
              for _ in range(6)]
    beats = []
    for g in groups:
        chunks = [g[i:i + R] for i in range(0, len(g), R)] or [[]]
        for c, chunk in enumerate(chunks):
            entries = [{"index": i, "value": int(rng.integers(-128, 128))} for i in chunk]
            entries += [{"index": 0, "value": 0}] * (R - len(entries))
            beats.append({"entries": entries, "count": len(chunk),
                          "last": c == len(chunks) - 1, "end": False})
    beats[-1]["end"] = True
    want = _sequencer_ops(beats, row_start, passes)

    class Top(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.submodules.seq = seq
            if table:
                m.submodules.rows = table_mem
                m.submodules.mem = table_mem.memories["rows"]
                m.d.comb += [table_mem.en.eq(seq.row_en),
                             *(table_mem.addr[r].eq(seq.row_addr[r]) for r in range(R)),
                             *(seq.row_data[r].eq(table_mem.data[r]) for r in range(R))]
            return m

    async def feed(ctx):
        for b in beats:
            while rng.random() < 0.3:
                ctx.set(seq.i.valid, 0)
                await ctx.tick()
            ctx.set(seq.i.payload, b)
            ctx.set(seq.i.valid, 1)
            await ctx.tick().until(seq.i.ready)
        ctx.set(seq.i.valid, 0)

    got = []

    async def watch(ctx):
        full = [0, 0]
        free_at = []  # (cycle, buffer) the drain frees
        held = None
        for cycle in range(3000):
            if free_at and free_at[0][0] <= cycle:
                ctx.set(seq.drain_done, 1)
                ctx.set(seq.drain_buf, free_at.pop(0)[1])
            else:
                ctx.set(seq.drain_done, 0)
            if held is None and rng.random() < 0.1:
                held = int(rng.integers(0, 2))
            elif held is not None and rng.random() < 0.3:
                held = None
            ctx.set(seq.held, held is not None)
            ctx.set(seq.held_buf, held or 0)
            if ctx.get(seq.issue):
                buf = ctx.get(seq.buf)
                assert not full[buf] and held != buf
                n = len(want[len(got)][0])
                got.append(([ctx.get(seq.addr[r]) for r in range(n)],
                             [bool(ctx.get(seq.live[r])) for r in range(n)],
                             [ctx.get(seq.value[r]) for r in range(n)],
                             bool(ctx.get(seq.group)), bool(ctx.get(seq.end))))
                if got[-1][3]:
                    full[buf] = 1
                    free_at.append((cycle + int(rng.integers(1, 12)), buf))
            if ctx.get(seq.drain_done):
                full[ctx.get(seq.drain_buf)] = 0
            await ctx.tick()
            if len(got) == len(want):
                break

    sim = Simulator(Top())
    sim.add_clock(1e-6)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(watch)
    sim.run()
    # An op's entries beyond the beat's count are not live and read any address.
    assert [(a, lv, [v for v, x in zip(vals, lv) if x], g, e) for a, lv, vals, g, e in got] == \
        [(a, lv, [v for v, x in zip(vals, lv) if x], g, e) for a, lv, vals, g, e in want]


@pytest.mark.parametrize("banked, split", [(False, False), (True, False), (False, True)])
def test_products_multiply_and_route(banked, split):
    """Each op's products (slot weight x entry value) go to bank row pass * K + id of
    the op's buffer, a fixed latency later; the group flag comes a cycle before its
    last write."""
    rng = np.random.default_rng(3)
    R, P, K, passes = 2, 4, 3, 2 + split
    prods = Products(R, P, K, passes, lanes_per_copy=2, banked_weights=banked,
                     direct_weights=False, registers=False, split=split)
    latency = 3 + banked + split  # issue -> the write
    ops = []

    async def bench(ctx):
        pending = []  # (cycle the word is due, r, word)
        for cycle in range(80):
            issue = int(rng.random() < 0.7)
            op = dict(issue=issue, pass_index=int(rng.integers(0, passes)),
                      buf=int(rng.integers(0, 2)), group=int(rng.random() < 0.2), end=0,
                      live=[int(rng.integers(0, 2)) for _ in range(R)],
                      value=[int(rng.integers(-128, 128)) for _ in range(R)],
                      w=[[int(rng.integers(-128, 128)) for _ in range(P)] for _ in range(R)],
                      ids=[[int(rng.integers(0, K)) for _ in range(P)] for _ in range(R)])
            for n in ("issue", "pass_index", "buf", "group", "end"):
                ctx.set(getattr(prods, n), op[n])
            for r in range(R):
                ctx.set(prods.live[r], op["live"][r])
                ctx.set(prods.value[r], op["value"][r])
                word = word_layout(P, bits(K)).const(
                    [{"weight": op["w"][r][k], "kernel_id": op["ids"][r][k]} for k in range(P)])
                pending.append((cycle + 1 + banked, r, word))
            ops.append(op)
            for due, r, word in [x for x in pending if x[0] == cycle]:
                ctx.set(prods.word[r], word)
            t = cycle - latency
            if t >= 0:
                was = ops[t]
                for r in range(R):
                    for k in range(P):
                        live = ctx.get(prods.write_live[r][k // 2])
                        assert live == (was["issue"] and was["live"][r])
                        if live:
                            assert ctx.get(prods.write_buf[k // 2]) == was["buf"]
                            assert ctx.get(prods.write_addr[r][k]) == \
                                was["pass_index"] * K + was["ids"][r][k]
                            assert ctx.get(prods.prod[r][k]) == was["w"][r][k] * was["value"][r]
            if t + 1 >= 0:  # the group flag a cycle before the write
                was = ops[t + 1]
                assert ctx.get(prods.group_done) == (was["issue"] and was["group"])
            await ctx.tick()

    run(prods, bench)


@pytest.mark.parametrize("registers, read_register, R", [
    (False, False, 2), (False, True, 2), (True, False, 2),
    (False, False, 4), (False, True, 5), (True, False, 4)])  # R >= 4: the sum in halves
def test_accumulator_banks_accumulate_drain_and_clear(registers, read_register, R):
    """Random writes (back-to-back hits on one row included, but with the read data
    registered) into one buffer, then its drain: the drain's sums are the R banks' totals
    (memory banks: a cycle after the clear, two with four banks or more), and a drained
    row is zero."""
    rng = np.random.default_rng(4)
    P, rows, G = 4, 6, 2
    banks = AccumulatorBanks(R, P, rows, 20, lanes_per_copy=G, registers=registers,
                             read_register=read_register)
    assert banks.drain_latency == (1 if registers else 2 + (R >= 4))
    gap = 1 + read_register  # read -> write
    acc = np.zeros((2, R, P, rows), dtype=np.int64)

    async def bench(ctx):
        for rnd in range(4):
            buf = rnd % 2
            writes = []  # per cycle: [r][k] (addr, prod) or None
            for cycle in range(40 + gap):
                op = None
                # (with the read data registered, hits on one row are three cycles apart)
                if cycle < 40 and rng.random() < 0.8 and (not read_register or cycle % 3 == 0):
                    op = [[(int(rng.integers(0, 2)), int(rng.integers(-20000, 20000)))
                           for _ in range(P)] for _ in range(R)]  # rows 0..1: many hits
                writes.append(op)
                for g in range(P // G):
                    ctx.set(banks.read_valid[g], op is not None)
                    ctx.set(banks.read_buf[g], buf)
                for r in range(R):
                    for k in range(P):
                        ctx.set(banks.read_addr[r][k], op[r][k][0] if op else 0)
                w = writes[cycle - gap] if cycle >= gap else None
                for r in range(R):
                    for g in range(P // G):
                        ctx.set(banks.write_live[r][g], w is not None)
                    for k in range(P):
                        if w is not None:
                            ctx.set(banks.write_addr[r][k], w[r][k][0])
                            ctx.set(banks.prod[r][k], w[r][k][1])
                            acc[buf, r, k, w[r][k][0]] += w[r][k][1]
                for g in range(P // G):
                    ctx.set(banks.write_buf[g], buf)
                await ctx.tick()
            for g in range(P // G):
                for r in range(R):
                    ctx.set(banks.write_live[r][g], 0)
            # Drain the buffer just filled: read row a, then clear it and take the sums.
            for a in range(rows):
                ctx.set(banks.drain_en, 1)
                ctx.set(banks.drain_buf, buf)
                ctx.set(banks.drain_addr, a)
                for g in range(P // G):
                    ctx.set(banks.clear[g], 0)
                    ctx.set(banks.read_valid[g], 0)
                await ctx.tick()
                ctx.set(banks.drain_en, 0)
                for g in range(P // G):
                    ctx.set(banks.clear[g], 1)
                    ctx.set(banks.clear_buf[g], buf)
                    ctx.set(banks.clear_addr[g], a)
                want = [int(acc[buf, :, k, a].sum()) for k in range(P)]
                for cycle in range(1, banks.drain_latency + 1):  # cycles after the read
                    if cycle == banks.drain_latency:
                        assert [ctx.get(banks.sums[k]) for k in range(P)] == want
                    await ctx.tick()
                    for g in range(P // G):
                        ctx.set(banks.clear[g], 0)
            acc[buf] = 0

    run(banks, bench)


@pytest.mark.parametrize("compact", [False, True])
def test_drain_emits_each_group_under_output_stalls(compact):
    """Groups complete at random times; the drain emits each one's M sums in block
    order with ``last``/``end``, frees each buffer once, under random output stalls."""
    rng = np.random.default_rng(5)
    M, P, K, passes, A = 10, 2, 3, 2, 16
    drain = Drain(M, P, K, passes, A, lanes_per_copy=2, compact=compact)

    class Top(Elaboratable):  # banks stand-in: a row's sums name its buffer, row and lane
        def elaborate(self, platform):
            m = Module()
            m.submodules.drain = drain
            m.d.comb += [drain.sums[k].eq(drain.clear_buf[0] * 1000 + drain.clear_addr[0] * 10
                                          + k) for k in range(P)]
            return m

    n_blocks = -(-M // P)
    groups = [(g % 2, g == 5) for g in range(6)]  # (buffer, end)
    want = []
    for buf, end in groups:
        for n in range(n_blocks):
            addr = (n % passes) * K + n // passes
            want.append(([buf * 1000 + addr * 10 + k for k in range(P)],
                         n == n_blocks - 1, end and n == n_blocks - 1))

    async def feed(ctx):
        busy = [False, False]
        g = 0
        while g < len(groups):
            buf, end = groups[g]
            if not busy[buf] and rng.random() < 0.3:
                ctx.set(drain.group_done, 1)
                ctx.set(drain.group_buf, buf)
                ctx.set(drain.group_end, end)
                busy[buf] = True
                g += 1
            else:
                ctx.set(drain.group_done, 0)
            await ctx.tick()
            if ctx.get(drain.done):
                busy[ctx.get(drain.buf)] = False
        ctx.set(drain.group_done, 0)

    got = []

    async def take(ctx):
        while len(got) < len(want):
            ctx.set(drain.o.ready, int(rng.random() < 0.6))
            await ctx.delay(1e-9)
            if ctx.get(drain.o.valid) and ctx.get(drain.o.ready):
                beat = ctx.get(drain.o.payload)
                got.append(([int(v) for v in beat.data], bool(beat.last), bool(beat.end)))
            await ctx.tick()

    sim = Simulator(Top())
    sim.add_clock(1e-6)
    sim.add_testbench(feed, background=True)
    sim.add_testbench(take)
    sim.run()
    assert got == want


def test_weight_words_are_the_typed_word_layout():
    """The loader's weight image holds, per overlay word and pass, ``P`` slots of
    (weight, kernel id) exactly as the products read them (``word_layout``)."""
    rng = np.random.default_rng(5)
    ov = pack(zoo.complementary_weights(24, 30, 4, rng), 4)
    eng = OverlayEngine(**engine_parameters(ov), entries=2, lanes_per_beat=3, loadable=True)
    layout = word_layout(3, bits(4))
    w = ov.weights.reshape(ov.words, eng.passes, 3)
    ids = ov.kernel_ids.reshape(ov.words, eng.passes, 3)
    want = [layout.const([{"weight": int(w[i, q, k]), "kernel_id": int(ids[i, q, k])}
                          for k in range(3)]).as_bits()
            for i in range(ov.words) for q in range(eng.passes)]
    assert list(eng.load_ports[0].image) == want
