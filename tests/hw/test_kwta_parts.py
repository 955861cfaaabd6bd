# amaranth: UnusedElaboratable=no
"""The k-WTA units' sub-components, each against a Python model."""

import random
from collections import Counter

import numpy as np
import pytest
from amaranth.sim import Simulator
from cosparse.hw.kwta.order import WinnerPicker, WinnerSorter
from cosparse.hw.kwta.sort import BeatSorter, MergeArray, SortedInsert
from cosparse.hw.kwta.threshold import (
    FrameReader,
    FrameWriter,
    LaneHistograms,
    ThresholdCompare,
    ThresholdScan,
    WinnerPacker,
)
from cosparse.hw.streams import decode, dense_beats, encode, sparse_beats
from cosparse.sim.streamsim import Port, simulate


def run(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()


def put(ctx, port, value):
    ctx.set(port.as_value(), encode(port.shape(), value))


def get(ctx, port):
    return decode(port.shape(), ctx.get(port.as_value()))


def best(records, n):
    """The ``n`` best valid records: key descending, ties to the lower index."""
    return sorted((r for r in records if r["valid"]), key=lambda r: (-r["key"], r["index"]))[:n]


def rec(key, index, value=1, valid=1):
    return {"key": key, "index": index, "value": value, "valid": valid}


# --------------------------------------------------------------------------
# Local: sorting and merging


def test_beat_sorter_sorts_each_beat_with_random_enable():
    D, k = 5, 3
    dut = BeatSorter(D, k, key_bits=4, index_bits=4)
    rng = random.Random(1)
    beats = [{"lanes": [rec(rng.randrange(4), d, valid=int(rng.random() < 0.8)) for d in range(D)],
              "valid": 1, "first": b % 2, "last": 1 - b % 2, "end": int(b == 29)}
             for b in range(30)]

    async def tb(ctx):
        taken = []
        for beat in beats:
            put(ctx, dut.i, beat)
            while True:
                en = rng.random() < 0.7
                ctx.set(dut.en, en)
                await ctx.tick()
                if en:
                    taken.append(beat)
                    if len(taken) >= 2:
                        src, out = taken[-2], get(ctx, dut.o)
                        want = best(src["lanes"], dut.kept)
                        assert [r for r in out["lanes"] if r["valid"]] == want
                        assert {f: out[f] for f in ("valid", "first", "last", "end")} == \
                            {f: src[f] for f in ("valid", "first", "last", "end")}
                    break
    run(dut, tb)


@pytest.mark.parametrize("lanes, k", [(3, 5), (4, 4), (2, 7)])
def test_merge_array_keeps_the_best_k_of_each_position(lanes, k):
    dut = MergeArray(lanes, k, key_bits=4, index_bits=6)
    rng = random.Random(lanes * 10 + k)
    empty = {"lanes": [rec(0, 0, 0, 0)] * lanes, "valid": 0, "first": 0, "last": 0, "end": 0}
    positions = []
    for p in range(12):
        nb = rng.randrange(1, 5)
        recs = [rec(rng.randrange(6), c, rng.randrange(-3, 4)) for c in range(nb * lanes)]
        positions.append((nb, recs))

    async def tb(ctx):
        seen = []
        feed = []
        for nb, recs in positions:
            for b in range(nb):
                beat = recs[b * lanes:(b + 1) * lanes]
                feed.append({"lanes": best(beat, lanes), "valid": 1, "first": int(b == 0),
                             "last": int(b == nb - 1), "end": 0, "_want": best(recs, k)})
        feed += [dict(empty, _want=None)] * 3
        for beat in feed:
            put(ctx, dut.i, {f: ([dict(r) for r in beat["lanes"]] +
                                 [rec(0, 0, 0, 0)] * (lanes - len(beat["lanes"]))
                                 if f == "lanes" else beat[f]) for f in empty})
            while True:
                en = rng.random() < 0.7
                ctx.set(dut.en, en)
                o = get(ctx, dut.o)
                if en and o["valid"] and o["last"]:
                    seen.append([r for r in o["cells"] if r["valid"]])
                await ctx.tick()
                if en:
                    break
        assert seen == [best(recs, k) for _, recs in positions]
    run(dut, tb)


def test_sorted_insert_keeps_the_best_k_of_each_position():
    k = 4
    dut = SortedInsert(k, key_bits=4, index_bits=5)
    rng = random.Random(3)

    async def tb(ctx):
        for p in range(15):
            n = rng.randrange(1, 10)
            recs = [rec(rng.randrange(5), c, rng.randrange(-2, 3)) for c in range(n)]
            for r in recs:
                put(ctx, dut.i, {"key": r["key"], "index": r["index"], "value": r["value"],
                                 "first": int(r["index"] == 0)})
                while rng.random() < 0.3:  # idle cycles change nothing
                    ctx.set(dut.en, 0)
                    await ctx.tick()
                ctx.set(dut.en, 1)
                await ctx.tick()
            ctx.set(dut.en, 0)
            assert [r for r in get(ctx, dut.cells) if r["valid"]] == best(recs, k)
    run(dut, tb)


# --------------------------------------------------------------------------
# Local: emitters in channel order


@pytest.mark.parametrize("cls", [WinnerSorter, WinnerPicker])
@pytest.mark.parametrize("k, R", [(6, 2), (5, 8), (1, 1)])
def test_winner_emitters_channel_order_under_stalls(cls, k, R):
    dut = cls(k, R, 5)
    rng = np.random.default_rng(k * 10 + R)
    beats, groups = [], []
    for g in range(20):
        chans = rng.permutation(32)[:k]
        valid = rng.random(k) < 0.8
        vals = np.where(rng.random(k) < 0.3, 0, rng.integers(-128, 128, k))
        cells = [{"index": int(c), "value": int(v), "valid": int(ok)}
                 for c, v, ok in zip(chans, vals, valid)]
        beats.append({"cells": cells, "end": int(g == 19)})
        groups.append(sorted((c["index"], c["value"]) for c in cells
                             if c["valid"] and c["value"] != 0))
    want = sparse_beats(groups, R)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=k + R)
    assert res.outputs[0] == want


# --------------------------------------------------------------------------
# Global: writer, reader, histograms, scan, compare, packer


def test_frame_writer_fills_halves_and_computes_keys():
    W, D, G = 6, 2, 4  # 3 groups of 4, 2 beats each
    dut = FrameWriter(W, 2, D, G, key_bits=8, boost_bits=0)
    rng = random.Random(4)
    frames = [[[rng.randrange(-128, 128) for _ in range(G)] for _ in range(3)] for _ in range(2)]

    async def tb(ctx):
        writes, keys = [], []

        async def step():
            await ctx.tick()
            if ctx.get(dut.keys_valid):
                keys.append(get(ctx, dut.keys))

        for f, frame in enumerate(frames):
            for beat in dense_beats(frame, D):
                put(ctx, dut.i.payload, beat)
                while rng.random() < 0.3:
                    ctx.set(dut.i.valid, 0)
                    await step()
                ctx.set(dut.i.valid, 1)
                assert ctx.get(dut.i.ready)
                writes.append((ctx.get(dut.buf_addr), ctx.get(dut.buf_data)))
                assert ctx.get(dut.buf_en)
                await step()
            ctx.set(dut.i.valid, 0)
            for _ in range(4):
                await step()
            assert ctx.get(dut.filled) and not ctx.get(dut.i.ready) and not ctx.get(dut.busy)
            assert ctx.get(dut.slot) == f % 2
            ctx.set(dut.release, 1)
            await ctx.tick()
            ctx.set(dut.release, 0)
            assert not ctx.get(dut.filled)
        flat = [[v for v in frame_beat["data"]] for fr in frames for frame_beat in dense_beats(fr, D)]
        assert [a for a, _ in writes] == list(range(2 * W))
        assert [[(d >> (8 * j)) & 0xFF for j in range(D)] for _, d in writes] == \
            [[v & 0xFF for v in beat] for beat in flat]
        assert [[lane["key"] for lane in kw] for kw in keys] == \
            [[(v & 0xFF) ^ 0x80 for v in beat] for beat in flat]
        assert all(lane["valid"] for kw in keys for lane in kw)
    run(dut, tb)


def test_frame_reader_reads_a_half_with_random_enable():
    W, BG, D, G = 6, 3, 2, 5  # 2 groups of 5: 3 beats each, the last beat's lane 1 empty
    dut = FrameReader(W, BG, D, G, key_bits=8, boost_bits=0)
    rng = random.Random(5)
    mem = [[rng.randrange(-128, 128) for _ in range(D)] for _ in range(2 * W)]

    async def tb(ctx):
        out = []
        ctx.set(dut.slot, 1)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        addr = None
        for _ in range(60):
            en = rng.random() < 0.7
            ctx.set(dut.en, en)
            a = ctx.get(dut.buf_addr)
            o = get(ctx, dut.o)
            if en and o["valid"]:
                out.append(o)
            await ctx.tick()
            if en:
                addr = a
                word = mem[addr]
                ctx.set(dut.buf_data, sum((v & 0xFF) << (8 * j) for j, v in enumerate(word)))
        assert not ctx.get(dut.busy)
        assert len(out) == W
        for w, o in enumerate(out):
            bg = w % BG
            assert (o["bg"], o["glast"], o["fend"]) == (bg, int(bg == BG - 1), int(w == W - 1))
            for d, lane in enumerate(o["lanes"]):
                x = mem[W + w][d]
                assert lane == {"key": (x & 0xFF) ^ 0x80, "value": x,
                                "valid": int(bg * D + d < G)}
    run(dut, tb)


def test_lane_histograms_count_repeated_bins_then_clear():
    D = 2
    dut = LaneHistograms(D, 6)
    rng = random.Random(6)
    want = [Counter() for _ in range(D)]

    async def tb(ctx):
        for _ in range(40):
            v = rng.random() < 0.8
            digits = [rng.choice([3, 3, 7, 200]) for _ in range(D)]
            incs = [rng.random() < 0.8 for _ in range(D)]
            ctx.set(dut.valid, v)
            put(ctx, dut.digits, digits)
            ctx.set(dut.incs, sum(int(b) << d for d, b in enumerate(incs)))
            for d in range(D):
                if v and incs[d]:
                    want[d][digits[d]] += 1
            await ctx.tick()
        ctx.set(dut.valid, 0)
        await ctx.tick().repeat(3)
        assert not ctx.get(dut.busy)
        ctx.set(dut.scanning, 1)
        for b in (3, 7, 200, 5):
            ctx.set(dut.scan_bin, b)
            await ctx.tick()
            assert get(ctx, dut.counts) == [want[d][b] for d in range(D)]
            ctx.set(dut.clear_bin, b)
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            await ctx.tick()
            assert get(ctx, dut.counts) == [0] * D  # read again after the clear
    run(dut, tb)


@pytest.mark.parametrize("need", [1, 10, 37, 60])
def test_threshold_scan_finds_the_digit_and_clears(need):
    D = 3
    dut = ThresholdScan(D, 5, 7)
    rng = np.random.default_rng(need)
    hist = [[int(v) for v in rng.integers(0, 3, 256) * (rng.random(256) < 0.1)]
            for _ in range(D)]
    totals = [sum(hist[d][b] for d in range(D)) for b in range(256)]
    cum, digit, above = 0, None, None
    for b in range(255, -1, -1):
        if cum + totals[b] >= need:
            digit, above = b, cum
            break
        cum += totals[b]

    async def tb(ctx):
        ctx.set(dut.need, need)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycles = 0
        while not ctx.get(dut.done):
            addr = ctx.get(dut.bin)
            if ctx.get(dut.clear):
                for d in range(D):
                    hist[d][ctx.get(dut.clear_bin)] = 0
            await ctx.tick()
            put(ctx, dut.counts, [hist[d][addr] for d in range(D)])
            cycles += 1
        await ctx.tick()
        assert not ctx.get(dut.scanning)
        if digit is not None:
            assert (ctx.get(dut.digit), ctx.get(dut.above)) == (digit, above)
        assert cycles == 256 + 2
        assert all(v == 0 for d in range(D) for v in hist[d][1:])
    run(dut, tb)


def test_threshold_compare_takes_the_quota_in_order():
    D, BG = 4, 3
    dut = ThresholdCompare(D, 8, 4, 6, BG)
    rng = random.Random(8)
    thr, quota = 130, 5

    async def tb(ctx):
        ctx.set(dut.thr, thr)
        ctx.set(dut.quota, quota)
        ctx.set(dut.load, 1)
        await ctx.tick()
        ctx.set(dut.load, 0)
        words = [{"valid": 1, "glast": int(w % BG == BG - 1), "fend": int(w == 11), "bg": w % BG,
                  "lanes": [{"key": rng.choice([129, 130, 130, 131]), "value": rng.randrange(-2, 3),
                             "valid": int(rng.random() < 0.9)} for _ in range(D)]}
                 for w in range(12)]
        out = []
        for word in words + [dict(words[0], valid=0)] * 3:
            put(ctx, dut.i, word)
            while True:
                en = rng.random() < 0.7
                ctx.set(dut.en, en)
                await ctx.tick()
                o = get(ctx, dut.o)
                if en and o["valid"] and (not out or out[-1] is not o):
                    out.append(o)
                if en:
                    break
        left = quota
        assert len(out) == len(words)
        for word, o in zip(words, out):
            win = 0
            for d, lane in enumerate(word["lanes"]):
                eq = lane["valid"] and lane["key"] == thr
                wins = (lane["valid"] and lane["key"] > thr) or (eq and left > 0)
                left -= eq and left > 0
                win |= int(wins and lane["value"] != 0) << d
                assert o["entries"][d] == {"index": word["bg"] * D + d, "value": lane["value"]}
            assert (o["win"], o["glast"], o["fend"]) == (win, word["glast"], word["fend"])
    run(dut, tb)


@pytest.mark.parametrize("D, R, G", [(3, 2, 7), (4, 8, 8), (2, 1, 3)])
def test_winner_packer_canonical_beats_under_stalls(D, R, G):
    dut = WinnerPacker(D, R, 4)
    rng = np.random.default_rng(D * 10 + R)
    words, groups = [], []
    for g in range(15):
        win = rng.random(G) < 0.5
        vals = rng.integers(-128, 128, G)
        nb = -(-G // D)
        for b in range(nb):
            lanes = range(b * D, min(G, (b + 1) * D))
            words.append({"entries": [{"index": c, "value": int(vals[c])} for c in lanes],
                          "win": sum(int(win[c]) << (c - b * D) for c in lanes),
                          "last": int(b == nb - 1), "end": int(g == 14 and b == nb - 1)})
        groups.append([(c, int(vals[c])) for c in range(G) if win[c]])
    want = sparse_beats(groups, R)
    res = simulate(dut, [Port(dut.i, dut.in_layout, words)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=D + R)
    assert res.outputs[0] == want
