"""The windows' parts alone: write sides, walkers and output stages, with random stalls."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator


from cosparse.hw.dense_window import BankWalker, BankWriter, FieldPacker
from cosparse.hw.streams import dense_beats, encode, sparse_beats
from cosparse.hw.util import bits
from cosparse.hw.window import PositionWriter, TapReader, TapWalker
from cosparse.sim.streamsim import Port, simulate


def _memory(m, name, width, depth, init=()):
    m.submodules[name] = mem = Memory(shape=unsigned(width), depth=depth, init=list(init))
    return mem


def _feed(dut, layout, beats, rng, stall):
    """A testbench driving ``dut.i`` with ``beats``, valid low at random."""
    async def driver(ctx):
        for beat in beats:
            while rng.random() < stall:
                await ctx.tick()
            ctx.set(dut.i.payload.as_value(), encode(layout, beat))
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
    return driver


def _buffer_flags(dut, flag, initial, released):
    """A background testbench playing the write side: ``flag`` starts at ``initial`` and a
    buffer's bit drops after the cycle its ``clear`` bit is high (recorded in ``released``)."""
    async def flags(ctx):
        state = initial
        ctx.set(flag, state)
        async for _, _, clear in ctx.tick().sample(dut.clear):
            for b in range(2):
                if clear >> b & 1:
                    released.append(b)
            state &= ~clear
            ctx.set(flag, state)
    return flags


def _groups(rng, positions, channels, max_active):
    """(channel, value) pairs of each position, some positions empty."""
    out = []
    for _ in range(positions):
        n = 0 if rng.random() < 0.2 else int(rng.integers(1, max_active + 1))
        ch = sorted(rng.choice(channels, n, replace=False).tolist())
        values = rng.choice([v for v in range(-128, 128) if v], n)
        out.append([(c, int(v)) for c, v in zip(ch, values)])
    return out


def test_position_writer_stores_each_position_and_holds_full_buffers():
    hw, C, R, max_active = 12, 6, 2, 5
    rows = -(-max_active // R)
    dut = PositionWriter(hw, C, R, rows)
    m = Module()
    m.submodules.dut = dut
    store = _memory(m, "store", len(dut.store.data), 2 * hw * rows)
    nwords = _memory(m, "nwords", len(dut.nwords.data), 2 * hw)
    wiring.connect(m, dut.store, store.write_port())
    wiring.connect(m, dut.nwords, nwords.write_port())
    rng = np.random.default_rng(1)
    frames = [_groups(rng, hw, C, max_active) for _ in range(3)]
    beats = [b for f in frames for b in sparse_beats(f, R)]
    ib = bits(C)
    seen = []

    def stored(ctx, buf):
        got = []
        for p in range(hw):
            pairs = []
            for k in range(ctx.get(nwords.data[buf * hw + p])):
                word = ctx.get(store.data[(buf * hw + p) * rows + k])
                for r in range(word >> (R * (ib + 8))):
                    e = word >> (r * (ib + 8))
                    v = (e >> ib) & 0xff
                    pairs.append((e & ((1 << ib) - 1), v - 256 if v > 127 else v))
            got.append(pairs)
        return got

    async def checker(ctx):
        for buf in (0, 1):
            await ctx.tick().until(dut.full[buf])
            seen.append(stored(ctx, buf))
        for _ in range(5):  # both buffers full: the third frame waits
            assert not ctx.get(dut.i.ready)
            await ctx.tick()
        ctx.set(dut.clear, 0b01)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        assert ctx.get(dut.full) == 0b10
        await ctx.tick().until(dut.full[0])
        seen.append(stored(ctx, 0))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(_feed(dut, dut.in_layout, beats, random.Random(3), 0.3))
    sim.add_testbench(checker)
    sim.run()
    assert seen == frames


TAP_CASES = [  # h, w, c, kernel, stride, padding, rows
    (4, 5, 3, (3, 3), (1, 1), (1, 1, 1, 1), 2),
    (5, 4, 2, (2, 3), (2, 1), (0, 2, 1, 0), 1),
]


@pytest.mark.parametrize("h, w, c, kernel, stride, padding, rows", TAP_CASES)
def test_tap_walker_walks_both_buffers_and_releases_them(h, w, c, kernel, stride, padding, rows):
    dut = TapWalker(h, w, c, kernel=kernel, stride=stride, padding=padding, rows=rows)
    rng = np.random.default_rng(h)
    counts = rng.integers(1, rows + 1, 2 * h * w).tolist()
    m = Module()
    m.submodules.dut = dut
    nwords = _memory(m, "nwords", len(dut.nwords.data), 2 * h * w, counts)
    wiring.connect(m, dut.nwords, nwords.read_port())
    kh, kw = kernel
    sh, sw = stride
    pt, pl = padding[:2]
    want = []
    for buf in range(2):
        for oy in range(dut.out_height):
            for ox in range(dut.out_width):
                for dy in range(kh):
                    for dx in range(kw):
                        iy, ix = oy * sh + dy - pt, ox * sw + dx - pl
                        p = buf * h * w + iy * w + ix
                        inb = 0 <= iy < h and 0 <= ix < w
                        want.append({"inb": int(inb), "base": (dy * kw + dx) * c,
                                     "last": int(dy == kh - 1 and dx == kw - 1),
                                     "end": int((dy, dx, oy, ox) == (kh - 1, kw - 1,
                                                                     dut.out_height - 1,
                                                                     dut.out_width - 1)),
                                     **({"row": p * rows, "words": counts[p]} if inb else {})})
    released = []
    res = simulate(m, [], [Port(dut.taps, dut.tap_layout, count=len(want))], stall=0.3, seed=h,
                   extra_testbenches=(_buffer_flags(dut, dut.full, 0b11, released),))
    got = [{k: v for k, v in t.items() if k in w_} for t, w_ in zip(res.outputs[0], want)]
    assert got == want
    assert released == [0, 1]


def test_tap_reader_sends_each_taps_words_with_its_offset():
    hw, C, R, rows, field = 6, 5, 2, 3, 45
    dut = TapReader(hw, C, field, R, rows)
    rng = np.random.default_rng(5)
    ib = bits(C)
    words = []
    for _ in range(2 * hw * rows):
        n = int(rng.integers(0, R + 1))
        ent = [(int(rng.integers(0, C)), int(rng.integers(-128, 128))) for _ in range(R)]
        words.append((n, ent))
    raw = [sum(((i | (v & 0xff) << ib) << (r * (ib + 8))) for r, (i, v) in enumerate(e))
           | n << (R * (ib + 8)) for n, e in words]
    m = Module()
    m.submodules.dut = dut
    store = _memory(m, "store", len(dut.store.data), 2 * hw * rows, raw)
    wiring.connect(m, dut.store, store.read_port())
    taps, want = [], []
    for t in range(60):
        pos = int(rng.integers(0, 2 * hw))
        tap = {"row": pos * rows, "inb": int(rng.random() < 0.8),
               "base": C * int(rng.integers(0, field // C)), "last": int(t % 3 == 2),
               "end": int(t == 59), "words": int(rng.integers(0, rows + 1))}
        taps.append(tap)
        n = max(1, tap["words"]) if tap["inb"] else 1
        for k in range(n):
            count, ent = words[tap["row"] + k]
            count = count if tap["inb"] else 0
            final = k == n - 1
            entries = [{"index": tap["base"] + i, "value": v} for i, v in ent[:count]]
            want.append({"entries": entries,
                         "count": count, "last": int(final and tap["last"]),
                         "end": int(final and tap["end"])})

    def strip(beats):
        return [dict(b, entries=b["entries"][:b["count"]]) for b in beats]

    for stall in (0.3, 0.0):
        res = simulate(m, [Port(dut.taps, dut.tap_layout, taps)],
                       [Port(dut.o, dut.out_layout, count=len(want))], stall=stall, seed=7)
        assert strip(res.outputs[0]) == want
    assert np.all(np.diff(res.cycles[0]) == 1)  # unstalled: one beat per cycle


def _bank_geometry(h, w, kernel, padding):
    kh, kw = kernel
    bw = -(-(w + padding[1] + padding[3]) // kw)
    return bw, -(-(h + padding[0] + padding[2]) // kh) * bw


def test_bank_writer_puts_each_pixel_in_its_bank():
    h, w, C, kernel, padding = 5, 4, 2, (2, 3), (1, 2, 0, 1)
    kh, kw = kernel
    bw, depth = _bank_geometry(h, w, kernel, padding)
    dut = BankWriter(h, w, C, kernel=kernel, padding=padding)
    m = Module()
    m.submodules.dut = dut
    banks = [[_memory(m, f"bank_{r}_{c}", 8 * C, 2 * depth) for c in range(kw)] for r in range(kh)]
    for r in range(kh):
        for c in range(kw):
            wiring.connect(m, dut.banks[r][c], banks[r][c].write_port())
    x = np.random.default_rng(2).integers(-128, 128, (3, h, w, C))
    beats = [b for f in x for b in dense_beats(f.reshape(-1, C).tolist(), C)]
    seen = []

    def frame(ctx, buf):
        out = np.zeros((h, w, C), dtype=np.int64)
        for y in range(h):
            for xx in range(w):
                py, px = y + padding[0], xx + padding[1]
                addr = buf * depth + (py // kh) * bw + px // kw
                word = ctx.get(banks[py % kh][px % kw].data[addr])
                out[y, xx] = [((word >> (8 * k)) & 0xff) - 256 * ((word >> (8 * k + 7)) & 1)
                              for k in range(C)]
        return out

    async def checker(ctx):
        for f in range(3):
            buf = f % 2
            await ctx.tick().until(dut.written[buf])
            await ctx.tick()  # the frame's last pixel is written at this edge
            seen.append(frame(ctx, buf))
            if f == 1:  # both buffers written: the next frame's first beat waits in the skid
                await ctx.tick().until(~dut.i.ready)
                assert ctx.get(dut.written) == 0b11
                ctx.set(dut.clear, 1)  # released this cycle: the skid's beat is taken at once
                await ctx.tick()
                ctx.set(dut.clear, 0)
                assert ctx.get(dut.i.ready)
        ctx.set(dut.clear, 0b10)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        await ctx.tick()
        assert ctx.get(dut.written) == 0b01

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(_feed(dut, dut.in_layout, beats, random.Random(4), 0.3))
    sim.add_testbench(checker)
    sim.run()
    assert len(seen) == 3 and all(np.array_equal(a, b) for a, b in zip(seen, x))


WALK_CASES = [  # h, w, c, kernel, stride, padding
    (5, 6, 1, (3, 3), (1, 1), (1, 1, 1, 1)),
    (6, 5, 2, (2, 3), (3, 2), (1, 0, 0, 2)),
]


@pytest.mark.parametrize("h, w, c, kernel, stride, padding", WALK_CASES)
def test_bank_walker_reads_every_bank_of_each_window(h, w, c, kernel, stride, padding):
    kh, kw = kernel
    bw, depth = _bank_geometry(h, w, kernel, padding)
    dut = BankWalker(h, w, c, kernel=kernel, stride=stride, padding=padding)
    m = Module()
    m.submodules.dut = dut

    def content(r, c_, a):  # a distinct word per bank and address
        return (a * kh * kw + r * kw + c_) % (1 << (8 * c))

    for r in range(kh):
        for c_ in range(kw):
            mem = _memory(m, f"bank_{r}_{c_}", 8 * c, 2 * depth,
                          [content(r, c_, a) for a in range(2 * depth)])
            wiring.connect(m, dut.banks[r][c_], mem.read_port())
    sh, sw = stride
    pt, pl = padding[:2]
    want = []
    for buf in range(2):
        for oy in range(dut.out_height):
            for ox in range(dut.out_width):
                y0, x0 = oy * sh, ox * sw  # padded
                words = [[None] * kw for _ in range(kh)]
                mask = 0
                for dy in range(kh):
                    for dx in range(kw):
                        y, x = y0 + dy, x0 + dx
                        words[y % kh][x % kw] = content(y % kh, x % kw,
                                                        buf * depth + (y // kh) * bw + x // kw)
                        mask |= int(pt <= y < pt + h and pl <= x < pl + w) << (dy * kw + dx)
                want.append({"words": words, "yr": y0 % kh, "xr": x0 % kw, "mask": mask, "last": 1,
                             "end": int(oy == dut.out_height - 1 and ox == dut.out_width - 1)})
    released = []
    res = simulate(m, [], [Port(dut.win, dut.window_layout, count=len(want))], stall=0.3, seed=c,
                   extra_testbenches=(_buffer_flags(dut, dut.written, 0b11, released),))
    assert res.outputs[0] == want
    assert released == [0, 1]


def test_field_packer_rotates_and_masks():
    C, kernel = 2, (2, 3)
    kh, kw = kernel
    dut = FieldPacker(C, kernel=kernel)
    rng = random.Random(6)
    wins, want = [], []
    for k in range(50):
        words = [[rng.getrandbits(8 * C) for _ in range(kw)] for _ in range(kh)]
        yr, xr, mask = rng.randrange(kh), rng.randrange(kw), rng.getrandbits(kh * kw)
        wins.append({"words": words, "yr": yr, "xr": xr, "mask": mask, "last": 1,
                     "end": int(k == 49)})
        data = []
        for dy in range(kh):
            for dx in range(kw):
                word = words[(dy + yr) % kh][(dx + xr) % kw] if mask >> (dy * kw + dx) & 1 else 0
                data += [((word >> (8 * i)) & 0xff) - 256 * ((word >> (8 * i + 7)) & 1)
                         for i in range(C)]
        want.append({"data": data, "last": 1, "end": int(k == 49)})
    for stall in (0.3, 0.0):
        res = simulate(dut, [Port(dut.win, dut.window_layout, wins)],
                       [Port(dut.o, dut.out_layout, count=len(want))], stall=stall, seed=1)
        assert res.outputs[0] == want
    assert np.all(np.diff(res.cycles[0]) == 1)  # unstalled: one beat per cycle
