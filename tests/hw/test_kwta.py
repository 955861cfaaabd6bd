# amaranth: UnusedElaboratable=no
"""Local and global k-WTA units against the golden model (``golden.kwta_mask``)."""


import numpy as np
import pytest

from cosparse.hw.kwta import GlobalKWTA, LocalKWTA, key_bits
from cosparse.hw.streams import dense_beats, sparse_beats
from cosparse.sim.golden import kwta_mask, kwta_values
from cosparse.sim.streamsim import Port, simulate
from cosparse.sim.verilate import run_streams

# --------------------------------------------------------------------------
# Models and stimuli


def local_expected(x, k, boost, R, max_winners=None, key_shift=None, rescale=None,
                   key_range=(-128, 127), out_range=(-128, 127)):
    """Sparse beats of frame ``x[positions, C]`` after a local k-WTA (zero winners dropped)."""
    y = np.where(kwta_mask(x, k, None if boost is None else np.asarray(boost), max_winners,
                           key_shift, key_range), kwta_values(x, rescale, out_range), 0)
    return sparse_beats([[(int(c), int(row[c])) for c in np.flatnonzero(row)] for row in y], R)


def global_expected(x, k, boost, G, R, max_winners=None, key_shift=None, rescale=None,
                    key_range=(-128, 127), out_range=(-128, 127), chw=False):
    """Sparse beats of frame ``x`` (N values in HWC order, groups of G) after a global k-WTA
    (``chw``: ties in channel-major order)."""
    grid = np.asarray(x).reshape(-1, G)
    flat = (grid.T if chw else grid).reshape(-1)
    b = None if boost is None else (np.repeat if chw else np.tile)(np.asarray(boost),
                                                                   flat.size // G)
    y = np.where(kwta_mask(flat, k, b, max_winners, key_shift, key_range),
                 kwta_values(flat, rescale, out_range), 0)
    y = y.reshape(G, -1).T if chw else y.reshape(-1, G)
    return sparse_beats([[(int(c), int(row[c])) for c in np.flatnonzero(row)] for row in y], R)


def frame_beats(x, G, D):
    return dense_beats([[int(v) for v in row] for row in np.asarray(x).reshape(-1, G)], D)


def special_rows(rng, n):
    """Rows that stress the tie and zero rules, then random ones."""
    rows = [
        np.full(n, 5),  # all equal: ties everywhere, lower index wins
        np.zeros(n, dtype=np.int64),  # all zero: no non-zero winner, an empty group
        rng.integers(-128, 0, n),  # only negative values: negatives win
        np.full(n, -128),  # smallest value everywhere
        np.where(np.arange(n) == n - 1, 127, rng.integers(-3, 3, n)),  # the largest index wins
        rng.integers(-2, 3, n),  # few distinct values: many ties and zero winners
        np.where(np.arange(n) % 2, 20, 10),  # ties after a boost of 2 on even channels
    ]
    rows += [rng.integers(-128, 128, n) for _ in range(3)]
    return [r.astype(np.int64) for r in rows]


def strip(beats):
    """Only the valid entries of each beat."""
    return [dict(b, entries=b["entries"][:b["count"]]) for b in beats]


# --------------------------------------------------------------------------
# Local k-WTA

LOCAL_CASES = [  # C, k, D, R, boost
    (64, 8, 8, 8, "tie"),  # the benchmark shape, boosted
    (10, 3, 4, 2, None),  # C not a multiple of D
    (12, 12, 4, 5, "tie"),  # k = C keeps every non-zero
    (5, 1, 8, 8, None),  # k = 1, one beat per position (D > C)
    (9, 4, 3, 1, "wide"),  # 24-bit keys, one entry per beat
    (16, 7, 16, 3, "small"),  # one beat per position, several output beats
    # D = 1: the serial unit (insertion into k cells)
    (16, 4, 1, 1, "tie"),  # the digits shape on an iCE40
    (9, 9, 1, 2, None),  # k = C
    (7, 3, 1, 5, "wide"),  # R > k: one beat per position
    (12, 5, 1, 2, "small"),  # several output beats per position
    (1, 1, 1, 1, None),  # one channel
]


def make_boost(kind, n, rng):
    if kind is None:
        return None
    if kind == "tie":  # 2 on even channels, 1 on odd: x=10 (even) ties x=20 (odd)
        return [2 if c % 2 == 0 else 1 for c in range(n)]
    if kind == "small":
        return [int(b) for b in rng.integers(1, 5, n)]
    return [int(b) for b in rng.integers(1, 65536, n)]  # wide: up to 24-bit keys


@pytest.mark.parametrize("C, k, D, R, boost_kind", LOCAL_CASES)
def test_local_matches_golden_under_stalls(C, k, D, R, boost_kind):
    rng = np.random.default_rng(C * 100 + k)
    boost = make_boost(boost_kind, C, rng)
    dut = LocalKWTA(C, k, width=D, entries=R, boost=boost)
    frames = [np.stack(special_rows(rng, C)), rng.integers(-128, 128, (3, C)),
              np.zeros((1, C), dtype=np.int64)]  # several frames, the last one empty
    beats_in, want = [], []
    for x in frames:
        beats_in += frame_beats(x, C, D)
        want += local_expected(x, k, boost, R)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=C + k)
    assert res.outputs[0] == want  # canonical packing: identical beats, padding included


THRESHOLD_CASES = [  # C, k, B, D, R, boost kind: the threshold tie rule, up to B winners
    (16, 4, 8, 4, 4, "small"),
    (12, 3, 12, 8, 2, None),  # B = C: every tie at the k-th wins
    (9, 2, 5, 1, 2, "tie"),  # the serial unit
    (64, 8, 16, 8, 8, "small"),
]


@pytest.mark.parametrize("C, k, B, D, R, boost_kind", THRESHOLD_CASES)
def test_local_threshold_ties_match_golden(C, k, B, D, R, boost_kind):
    """Keys equal to the k-th also win, up to B; the golden model's rule, under stalls."""
    rng = np.random.default_rng(C * 10 + B)
    boost = make_boost(boost_kind, C, rng)
    dut = LocalKWTA(C, k, width=D, entries=R, boost=boost, max_winners=B)
    x = np.concatenate([np.stack(special_rows(rng, C)), rng.integers(-3, 4, (6, C))])
    want = local_expected(x, k, boost, R, B)
    more = np.count_nonzero(kwta_mask(x, k, None if boost is None else np.asarray(boost), B),
                            axis=1)
    assert more.max() > k  # the frame has positions with more than k winners
    res = simulate(dut, [Port(dut.i, dut.in_layout, frame_beats(x, C, D))],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=B)
    assert res.outputs[0] == want


QUANTIZED_KEY_CASES = [  # C, k, B, D, shift, boost range: keys x * boost / 2**shift, int8
    (16, 4, 8, 4, 3, (5, 12)),  # exact halves: rounding half to even decides
    (12, 3, None, 8, 0, (1, 3)),  # no shift: saturation only
    (10, 2, 6, 1, 9, (200, 2000)),  # the serial unit, keys saturate at both ends
    (32, 5, 10, 8, 12, (3000, 9000)),
    (12, 4, None, 4, 19, (1 << 16, 1 << 17)),  # 17-bit boosts (a model's float factor)
    (9, 3, 6, 1, 18, (1 << 15, 1 << 17)),  # the serial unit
]


@pytest.mark.parametrize("C, k, B, D, shift, brange", QUANTIZED_KEY_CASES)
def test_local_quantized_keys_match_golden(C, k, B, D, shift, brange):
    rng = np.random.default_rng(C + shift)
    boost = [int(b) for b in rng.integers(*brange, C)]
    dut = LocalKWTA(C, k, width=D, entries=3, boost=boost, max_winners=B, key_shift=shift)
    assert dut.key_bits == 8
    x = np.concatenate([np.stack(special_rows(rng, C)), rng.integers(-128, 128, (6, C))])
    want = local_expected(x, k, boost, 3, B, shift)
    res = simulate(dut, [Port(dut.i, dut.in_layout, frame_beats(x, C, D))],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=shift)
    assert res.outputs[0] == want


@pytest.mark.parametrize("C, k, D, rescale", [
    (16, 4, 4, (3, 2)),  # x * 3 / 4: halves round to even, large values saturate
    (12, 5, 1, (40000, 17)),  # x * 0.305: small winners become 0 and are dropped
    (10, 3, 8, (1, 0)),  # the identity
    (9, 4, 2, (12582917, 24)),  # a 24-bit multiplier: x * 0.75000006
    (8, 3, 4, (16000000, 44)),  # a shift past the product: every winner rounds to 0
])
def test_local_rescaled_winners_match_golden(C, k, D, rescale):
    rng = np.random.default_rng(C + rescale[1])
    boost = make_boost("small", C, rng)
    dut = LocalKWTA(C, k, width=D, entries=3, boost=boost, rescale=rescale)
    x = np.concatenate([np.stack(special_rows(rng, C)), rng.integers(-128, 128, (5, C))])
    want = local_expected(x, k, boost, 3, rescale=rescale)
    res = simulate(dut, [Port(dut.i, dut.in_layout, frame_beats(x, C, D))],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=C)
    assert res.outputs[0] == want


NINE_BIT_CASES = [  # D, boost, key_shift, key_range, rescale, out_range, max_winners
    (4, None, None, (-128, 127), None, (-128, 127), None),  # plain int9 values
    (8, "small", None, (-128, 127), None, (-128, 127), 6),  # boosted, threshold ties
    (1, "small", 3, (-100, 155), None, (-128, 127), None),  # a key quantized with a zero point
    (4, None, None, (-128, 127), (3, 2), (0, 255), None),  # winners rescaled to 0..255
]


@pytest.mark.parametrize("D, boost_kind, shift, key_range, rescale, out_range, B", NINE_BIT_CASES)
def test_local_nine_bit_values(D, boost_kind, shift, key_range, rescale, out_range, B):
    """int9 activations (a model's uint8 or int8 with a zero point, the zero point off)."""
    rng = np.random.default_rng(D + (shift or 0))
    C, k = 12, 3
    boost = make_boost(boost_kind, C, rng)
    dut = LocalKWTA(C, k, width=D, entries=3, boost=boost, max_winners=B, key_shift=shift,
                    rescale=rescale, value_bits=9, key_range=key_range, out_range=out_range)
    x = rng.integers(-255, 256, (8, C))
    x[0] = 255
    x[1] = rng.integers(-2, 3, C)
    want = local_expected(x, k, boost, 3, B, shift, rescale, key_range, out_range)
    res = simulate(dut, [Port(dut.i, dut.in_layout, frame_beats(x, C, D))],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=D)
    assert res.outputs[0] == want


@pytest.mark.parametrize("D, boost_kind, shift, key_range, rescale, out_range, B", NINE_BIT_CASES)
def test_global_nine_bit_values(D, boost_kind, shift, key_range, rescale, out_range, B):
    rng = np.random.default_rng(2 * D + (shift or 0))
    N, G, k = 24, 6, 5
    boost = make_boost(boost_kind, G, rng)
    dut = GlobalKWTA(N, k, group=G, width=D, entries=3, boost=boost, serial=D == 1,
                     max_winners=B, key_shift=shift, rescale=rescale, value_bits=9,
                     key_range=key_range, out_range=out_range)
    beats_in, want = [], []
    frames = [rng.integers(-255, 256, N), np.full(N, 255), rng.integers(-2, 3, N)]
    for x in frames:
        beats_in += frame_beats(x, G, D)
        want += global_expected(x, k, boost, G, 3, B, shift, rescale, key_range, out_range)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=D)
    assert res.outputs[0] == want


def test_local_ties_after_boost_and_largest_index():
    """Boost 2 on even channels: 10 (even) ties 20 (odd), and the lower channel wins."""
    C, k = 8, 3
    boost = [2, 1] * 4
    x = np.array([[10, 20, 10, 20, 10, 20, 10, 20],  # all keys 20: channels 0, 1, 2 win
                  [0, 0, 0, 0, 0, 0, 0, -1],  # winners 0..6 are zero: only the largest index
                  [-5, -9, -7, -6, -128, -100, -8, -90]])  # negatives only
    want = [
        {"entries": [{"index": 0, "value": 10}, {"index": 1, "value": 20},
                     {"index": 2, "value": 10}], "count": 3, "last": 1, "end": 0},
        {"entries": [], "count": 0, "last": 1, "end": 0},  # winners 0, 1, 2 are zero
        {"entries": [{"index": 0, "value": -5}, {"index": 1, "value": -9},
                     {"index": 3, "value": -6}], "count": 3, "last": 1, "end": 1},
    ]
    assert strip(local_expected(x, k, boost, 4)) == want
    dut = LocalKWTA(C, k, width=4, entries=4, boost=boost)
    res = simulate(dut, [Port(dut.i, dut.in_layout, frame_beats(x, C, 4))],
                   [Port(dut.o, dut.out_layout, count=3)], stall=0.3, seed=5)
    assert strip(res.outputs[0]) == want
    # Largest index: k = 1 with the only positive value on the last channel.
    dut = LocalKWTA(C, 1, width=4, entries=4)
    x = np.array([[-1] * 7 + [3]])
    res = simulate(dut, [Port(dut.i, dut.in_layout, frame_beats(x, C, 4))],
                   [Port(dut.o, dut.out_layout, count=1)], stall=0.3)
    assert strip(res.outputs[0])[0]["entries"] == [{"index": 7, "value": 3}]


def test_local_throughput_one_position_per_beats():
    """C=64, D=8: a position every 8 cycles, back to back, output overlapping input."""
    rng = np.random.default_rng(2)
    C, k, D, R = 64, 8, 8, 8
    dut = LocalKWTA(C, k, width=D, entries=R, boost=make_boost("small", C, rng))
    positions = 24
    x = rng.integers(-128, 128, (positions, C))
    x[x == 0] = 1  # every position has k non-zero winners: one output beat each
    want = local_expected(x, k, dut.boost, R)
    res = simulate(dut, [Port(dut.i, dut.in_layout, frame_beats(x, C, D))],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.0)
    assert res.outputs[0] == want
    assert dut.cycles_per_position == 8
    ins = np.array(res.input_cycles[0])
    assert (np.diff(ins) == 1).all()  # one beat per cycle, no bubble between positions
    starts = ins[::dut.beats]
    assert set(np.diff(starts)) == {dut.cycles_per_position}
    outs = np.array(res.cycles[0])
    assert set(np.diff(outs)) == {dut.cycles_per_position}
    assert outs[0] - ins[dut.beats - 1] == 9  # latency stated in the docstring


@pytest.mark.parametrize("C, k, R", [(16, 4, 1), (64, 8, 8), (16, 5, 1), (6, 6, 2), (8, 7, 1),
                                     (1, 1, 1)])
def test_local_serial_one_element_per_cycle(C, k, R):
    """D = 1: an element every cycle, no bubble between positions, emission overlapped
    (k + 2 <= C); else k + 2 cycles per position (the hold load, one winner a cycle)."""
    rng = np.random.default_rng(C + k)
    dut = LocalKWTA(C, k, width=1, entries=R, boost=make_boost("small", C, rng))
    positions = 12
    x = rng.integers(-128, 128, (positions, C))
    x[x == 0] = 1
    want = local_expected(x, k, dut.boost, R)
    res = simulate(dut, [Port(dut.i, dut.in_layout, frame_beats(x, C, 1))],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.0)
    assert res.outputs[0] == want
    assert dut.cycles_per_position == max(C, k + 2)
    ins = np.array(res.input_cycles[0])
    if k + 2 <= C:
        assert (np.diff(ins) == 1).all()
    starts = ins[::C]  # (the pipeline and the input skid take the first positions early)
    assert set(np.diff(starts)[3:].tolist()) == {dut.cycles_per_position}


@pytest.mark.parametrize("C, k, R, out_beats", [(8, 4, 8, 1), (6, 6, 2, 3)])
def test_local_throughput_one_beat_positions(C, k, R, out_beats):
    """C <= D: a position per cycle, or one output beat per cycle when R is the limit."""
    rng = np.random.default_rng(C)
    dut = LocalKWTA(C, k, width=8, entries=R)
    x = rng.integers(-128, 128, (20, C))
    x[x == 0] = 3
    want = local_expected(x, k, None, R)
    res = simulate(dut, [Port(dut.i, dut.in_layout, frame_beats(x, C, 8))],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.0)
    assert res.outputs[0] == want and len(want) == 20 * out_beats
    assert set(np.diff(res.cycles[0])) == {1}  # an output beat every cycle
    ins = res.input_cycles[0]
    assert (ins[-1] - ins[0]) <= 19 * out_beats + 2


@pytest.mark.parametrize("args, kwargs, match", [
    ((0, 1), {}, "channels"),
    ((8, 0), {}, "k must be an integer from 1 to 8, got 0"),
    ((8, 9), {}, "k must be"),
    ((8, 2), dict(width=0), "width"),
    ((8, 2), dict(entries=65), "entries"),
    ((8, 2), dict(boost=[1] * 7), "boost"),
    ((8, 2), dict(boost=[0] * 8), "from 1 to 65535, got 0"),
    ((8, 2), dict(boost=[70000] * 8), "70000"),
])
def test_local_bad_parameters(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalKWTA(*args, **kwargs)


def test_local_verilator_matches_golden():
    rng = np.random.default_rng(11)
    C, k, D, R = 64, 8, 8, 8
    boost = [int(b) for b in rng.integers(1, 200, C)]
    dut = LocalKWTA(C, k, width=D, entries=R, boost=boost)
    frames = [np.stack(special_rows(rng, C)), rng.integers(-128, 128, (6, C))]
    beats_in, want = [], []
    for x in frames:
        beats_in += frame_beats(x, C, D)
        want += local_expected(x, k, boost, R)
    res = run_streams(dut, "local_kwta", [("i", dut.in_layout, beats_in)],
                      [("o", dut.out_layout, len(want))], stall=0.3, seed=3)
    assert res.outputs[0] == want


# --------------------------------------------------------------------------
# Global k-WTA

GLOBAL_CASES = [  # N, G, k, D, R, boost kind
    (144, 16, 20, 8, 8, "small"),  # 3x3x16 map, 10-bit keys: two radix passes
    (60, 60, 60, 16, 4, "wide"),  # a vector, k = N, 24-bit keys: three passes
    (100, 10, 7, 4, 2, None),  # 10 positions of 10 channels (G not a multiple of D)
    (30, 6, 1, 4, 3, "tie"),  # k = 1
    (40, 40, 13, 3, 8, None),  # R > D
    (24, 3, 5, 8, 2, "small"),  # groups shorter than a beat (G < D)
    # D = 1: the serial threshold search
    (128, 128, 16, 1, 1, "small"),  # the digits shape on an iCE40 (a vector)
    (36, 4, 9, 1, 3, "tie"),  # 9 positions of 4 channels
    (20, 20, 20, 1, 2, "wide"),  # k = N, 24-bit keys
    (15, 5, 1, 1, 4, None),  # k = 1
]


def global_frames(rng, N, G):
    frames = [rng.integers(-128, 128, N)]
    frames += [r for r in special_rows(rng, N)[:3]]  # all equal, all zero, negatives only
    frames.append(np.where(np.arange(N) % 2, 20, 10))  # ties after the "tie" boost
    frames.append(np.where(np.arange(N) == N - 1, 100, rng.integers(-2, 3, N)))  # largest index
    return frames


def test_global_one_element_per_beat_histogram_build():
    """D = 1 without serial=True: the histogram build (fast parts), same results."""
    rng = np.random.default_rng(6)
    N, k = 50, 7
    boost = make_boost("small", N, rng)
    dut = GlobalKWTA(N, k, width=1, entries=2, boost=boost)
    assert not dut.serial and dut.cycles_per_frame == dut.digits * (N + 267)
    beats_in, want = [], []
    for x in global_frames(rng, N, N):
        beats_in += frame_beats(x, N, 1)
        want += global_expected(x, k, boost, N, 2)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=2)
    assert res.outputs[0] == want


def test_global_serial_cycles_per_frame():
    """D = 1: frames back to back at (kb + 2) * (N + 1) + 1 cycles, the next written meanwhile."""
    rng = np.random.default_rng(4)
    N, k = 40, 6
    dut = GlobalKWTA(N, k, width=1, entries=8, serial=True)
    assert dut.serial and dut.cycles_per_frame == (8 + 2) * (N + 1) + 1
    frames = [rng.integers(-128, 128, N) for _ in range(5)]
    beats_in, want = [], []
    for x in frames:
        beats_in += frame_beats(x, N, 1)
        want += global_expected(x, k, None, N, 8)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.0)
    assert res.outputs[0] == want
    ends = np.diff(res.cycles[0][1:])  # one beat per frame (6 winners, R = 8)
    assert set(ends.tolist()) == {dut.cycles_per_frame}


@pytest.mark.parametrize("N, G, k, D, R, boost_kind", GLOBAL_CASES)
def test_global_matches_golden_under_stalls(N, G, k, D, R, boost_kind):
    rng = np.random.default_rng(N + k)
    boost = make_boost(boost_kind, G, rng)
    dut = GlobalKWTA(N, k, group=G, width=D, entries=R, boost=boost, serial=D == 1)
    assert dut.digits == -(-key_bits(dut.boost) // 8)
    beats_in, want = [], []
    for x in global_frames(rng, N, G):  # back to back
        beats_in += frame_beats(x, G, D)
        want += global_expected(x, k, boost, G, R)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=N)
    assert res.outputs[0] == want


@pytest.mark.parametrize("N, G, k, B, D, R, serial", [
    (48, 8, 5, 12, 4, 3, False), (30, 30, 4, 30, 8, 8, False), (24, 4, 3, 7, 1, 2, True)])
def test_global_threshold_ties_match_golden(N, G, k, B, D, R, serial):
    """Keys equal to the k-th also win, up to B per frame, first in flat order."""
    rng = np.random.default_rng(N + B)
    boost = make_boost("small", G, rng)
    dut = GlobalKWTA(N, k, group=G, width=D, entries=R, boost=boost, serial=serial,
                     max_winners=B)
    frames = global_frames(rng, N, G) + [rng.integers(-2, 3, N) for _ in range(3)]
    beats_in, want, most = [], [], 0
    for x in frames:
        beats_in += frame_beats(x, G, D)
        want += global_expected(x, k, boost, G, R, B)
        flat = np.asarray(x).reshape(-1)
        most = max(most, int(kwta_mask(flat, k, np.tile(boost, N // G), B).sum()))
    assert most > k
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=B)
    assert res.outputs[0] == want


@pytest.mark.parametrize("N, G, k, B, D, shift, serial", [
    (48, 8, 5, 12, 4, 3, False), (30, 30, 4, None, 8, 10, False), (24, 4, 3, 7, 1, 5, True),
    (40, 8, 6, None, 4, 16, False)])  # 17-bit boosts
def test_global_quantized_keys_match_golden(N, G, k, B, D, shift, serial):
    rng = np.random.default_rng(N + shift)
    boost = [int(b) for b in rng.integers(1, 1 << (shift + 1), G)]
    dut = GlobalKWTA(N, k, group=G, width=D, entries=3, boost=boost, serial=serial,
                     max_winners=B, key_shift=shift)
    assert dut.key_bits == 8 and dut.digits == 1
    beats_in, want = [], []
    for x in global_frames(rng, N, G) + [rng.integers(-128, 128, N) for _ in range(2)]:
        beats_in += frame_beats(x, G, D)
        want += global_expected(x, k, boost, G, 3, B, shift)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=shift)
    assert res.outputs[0] == want


@pytest.mark.parametrize("N, G, k, D, rescale, serial", [
    (48, 8, 7, 4, (3, 2), False), (30, 30, 6, 1, (40000, 17), True),
    (24, 4, 5, 8, (5, 3), False), (32, 8, 6, 4, (16777215, 25), False)])
def test_global_rescaled_winners_match_golden(N, G, k, D, rescale, serial):
    rng = np.random.default_rng(N + k)
    boost = make_boost("small", G, rng)
    dut = GlobalKWTA(N, k, group=G, width=D, entries=3, boost=boost, serial=serial,
                     rescale=rescale)
    beats_in, want = [], []
    for x in global_frames(rng, N, G):
        beats_in += frame_beats(x, G, D)
        want += global_expected(x, k, boost, G, 3, rescale=rescale)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=N)
    assert res.outputs[0] == want


def _golden_then_rate(dut, beats_in, want, frames: int, seed: int) -> None:
    """The global k-WTA's output equals ``want`` under random stalls, and without stalls
    its frames start every ``cycles_per_frame`` cycles (after the first)."""
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=seed)
    assert res.outputs[0] == want
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.0)
    # (from each frame's last beat: its first may wait in the input register)
    starts = [res.input_cycles[0][f * dut.words + dut.words - 1] for f in range(frames)]
    assert set(np.diff(starts)[1:]) == {dut.cycles_per_frame}, np.diff(starts)


@pytest.mark.parametrize("N, G, k, B, D, boost_kind, shift", [
    (48, 8, 5, None, 4, None, None),  # exactly k: ties to the lower channel, then position
    (60, 6, 7, 10, 8, "small", None),  # the threshold rule's bound, one beat per position
    (72, 12, 9, None, 4, "small", 3),  # quantized keys, three beats per position
    (36, 9, 4, None, 2, "wide", None),  # two key digits
])
def test_global_channel_major_ties_match_golden(N, G, k, B, D, boost_kind, shift):
    """An NCHW map's tie order: keys equal to the k-th win by channel, then position."""
    rng = np.random.default_rng(N + k)
    boost = make_boost(boost_kind, G, rng)
    if shift is not None:
        boost = [int(b) for b in rng.integers(1, 1 << (shift + 1), G)]
    if boost_kind == "wide":  # two channels with the largest boost: ties across them
        boost[0] = boost[G - 1] = 65535
    kw = dict(max_winners=B, key_shift=shift)
    dut = GlobalKWTA(N, k, group=G, width=D, entries=3, boost=boost, tie_order="channel-major",
                     **kw)
    frames = global_frames(rng, N, G) + [rng.integers(-2, 3, N) for _ in range(3)]
    beats_in, want, differ = [], [], 0
    for x in frames:
        beats_in += frame_beats(x, G, D)
        want += global_expected(x, k, boost, G, 3, B, shift, chw=True)
        differ += want[-1] != global_expected(x, k, boost, G, 3, B, shift)[-1]
    assert differ  # the stream order would pick other winners among the ties
    _golden_then_rate(dut, beats_in, want, len(frames), seed=N)


def test_global_benchmark_vector_and_throughput():
    """N=1500, k=150, D=8 (fc1): exact winners; a frame every W + 267 cycles."""
    rng = np.random.default_rng(7)
    N, k, D, R = 1500, 150, 8, 8
    dut = GlobalKWTA(N, k, width=D, entries=R)
    frames = [rng.integers(-128, 128, N), np.maximum(rng.integers(-128, 128, N), 0),
              rng.integers(-128, 128, N)]
    beats_in, want = [], []
    for x in frames:
        beats_in += frame_beats(x, N, D)
        want += global_expected(x, k, None, N, R)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.0)
    assert res.outputs[0] == want
    W = dut.words
    assert W == 188 and dut.cycles_per_frame == W + 267 == 455
    ins = res.input_cycles[0]
    # a frame's beats are accepted one per cycle (its first may wait in the input register
    # while the frame before is written: it is counted from its second)
    starts = [ins[f * W + W - 1] for f in range(len(frames))]
    for f in range(len(frames)):
        assert ins[f * W + W - 1] - ins[f * W + 1] == W - 2
    assert set(np.diff(starts)) == {dut.cycles_per_frame}  # emission of f hidden under f + 1
    assert dut.cycles_per_frame < 2 * N // D + 256  # the target: about 2N/D + scan


@pytest.mark.parametrize("boost_hi, digits", [(200, 2), (3000, 3)])
def test_global_multipass_throughput(boost_hi, digits):
    rng = np.random.default_rng(boost_hi)
    N, G, k, D = 144, 16, 20, 8
    boost = [int(b) for b in rng.integers(boost_hi // 2, boost_hi, G)]
    dut = GlobalKWTA(N, k, group=G, width=D, entries=8, boost=boost)
    assert dut.digits == digits
    frames = [rng.integers(-128, 128, N) for _ in range(3)]
    beats_in, want = [], []
    for x in frames:
        beats_in += frame_beats(x, G, D)
        want += global_expected(x, k, boost, G, 8)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.0)
    assert res.outputs[0] == want
    starts = [res.input_cycles[0][f * dut.words + dut.words - 1] for f in range(3)]
    assert set(np.diff(starts)) == {dut.cycles_per_frame}


@pytest.mark.parametrize("digit_bits, B, tie_order, D", [
    (2, None, "stream", 1), (3, 9, "stream", 4), (4, None, "channel-major", 2), (1, 7, "stream", 3)])
def test_global_narrow_digits_match_golden(digit_bits, B, tie_order, D):
    """The histogram build with fewer bins a digit (the formal proof's size) picks the
    same winners: more radix passes, each over ``2**digit_bits`` bins."""
    rng = np.random.default_rng(digit_bits)
    N, G, k = 48, 8, 5
    boost = make_boost("small", G, rng)
    dut = GlobalKWTA(N, k, group=G, width=D, entries=3, boost=boost, max_winners=B,
                     tie_order=tie_order, digit_bits=digit_bits)
    assert dut.digits == -(-dut.key_bits // digit_bits) > 1
    frames = global_frames(rng, N, G) + [rng.integers(-2, 3, N) for _ in range(2)]
    beats_in, want = [], []
    for x in frames:
        beats_in += frame_beats(x, G, D)
        want += global_expected(x, k, boost, G, 3, B, chw=tie_order == "channel-major")
    _golden_then_rate(dut, beats_in, want, len(frames), seed=digit_bits)


@pytest.mark.parametrize("args, kwargs, match", [
    ((0, 1), {}, "size"),
    ((10, 11), {}, "k must be an integer from 1 to 10, got 11"),
    ((12, 2), dict(group=5), "group must divide size 12, got 5"),
    ((12, 2), dict(group=0), "group"),
    ((12, 2), dict(width=0), "width"),
    ((12, 2), dict(entries=0), "entries"),
    ((12, 2), dict(group=4, boost=[1] * 12), "boost"),
    ((12, 2), dict(group=4, boost=[1, 2, 3, 66000]), "66000"),
    ((12, 2), dict(group=4, boost=[1, 2, 3, 1.5]), "boost"),
    ((12, 2), dict(digit_bits=0), "digit_bits"),
    ((12, 2), dict(digit_bits=9), "digit_bits"),
    ((12, 2), dict(width=1, serial=True, digit_bits=4), "histogram build"),
])
def test_global_bad_parameters(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        GlobalKWTA(*args, **kwargs)


def test_global_verilator_matches_golden():
    """A 3x3x16 map with boost (two radix passes), k=20, random stalls."""
    rng = np.random.default_rng(12)
    N, G, k, D, R = 144, 16, 20, 8, 8
    boost = [int(b) for b in rng.integers(1, 200, G)]
    dut = GlobalKWTA(N, k, group=G, width=D, entries=R, boost=boost)
    beats_in, want = [], []
    for x in global_frames(rng, N, G):
        beats_in += frame_beats(x, G, D)
        want += global_expected(x, k, boost, G, R)
    res = run_streams(dut, "global_kwta", [("i", dut.in_layout, beats_in)],
                      [("o", dut.out_layout, len(want))], stall=0.3, seed=4)
    assert res.outputs[0] == want
