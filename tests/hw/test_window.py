"""Sparse window generator against a numpy model of the receptive fields."""

import numpy as np
import pytest

from cosparse.compiler import ir
from cosparse.hw.streams import sparse_beats
from cosparse.hw.window import SparseWindow
from cosparse.sim import golden
from cosparse.sim.streamsim import Port, simulate
from cosparse.sim.verilate import run_streams


def sparse_map(rng, h, w, c, max_active, p_empty=0.2, lo=-128, hi=127):
    x = np.zeros((h, w, c), dtype=np.int64)
    for y in range(h):
        for xx in range(w):
            if rng.random() < p_empty:
                continue
            n = int(rng.integers(1, max_active + 1))
            ch = rng.choice(c, n, replace=False)
            x[y, xx, ch] = rng.choice([v for v in range(lo, hi + 1) if v], n)
    return x


def input_groups(x):
    h, w, c = x.shape
    return [[(int(ch), int(x[y, xx, ch])) for ch in np.flatnonzero(x[y, xx])]
            for y in range(h) for xx in range(w)]


def expected_beats(x, dut):
    """Per output position: per tap, the beats its input position arrived in (or one empty)."""
    h, w, c = x.shape
    kh, kw = dut.kernel
    sh, sw = dut.stride
    pt, pl = dut.padding[:2]
    R = dut.entries
    beats = []
    for oy in range(dut.out_height):
        for ox in range(dut.out_width):
            pos_beats = []
            for dy in range(kh):
                for dx in range(kw):
                    iy, ix = oy * sh + dy - pt, ox * sw + dx - pl
                    base = (dy * kw + dx) * c
                    pairs = ([(base + int(ch), int(x[iy, ix, ch])) for ch in np.flatnonzero(x[iy, ix])]
                             if 0 <= iy < h and 0 <= ix < w else [])
                    tap = sparse_beats([pairs], R)
                    for b in tap:
                        b["last"] = b["end"] = 0
                    pos_beats += tap
            pos_beats[-1]["last"] = 1
            beats += pos_beats
    beats[-1]["end"] = 1
    return beats


def strip(beats, R):
    """Compare only the valid entries of each beat."""
    return [dict(b, entries=b["entries"][:b["count"]]) for b in beats]


CASES = [  # h, w, c, kernel, stride, padding, R, max_active
    (6, 5, 4, (3, 3), (1, 1), (0, 0, 0, 0), 2, 4),
    (5, 6, 3, (3, 2), (2, 1), (1, 1, 1, 0), 1, 3),
    (7, 7, 8, (5, 5), (1, 1), (2, 2, 2, 2), 4, 4),
    (4, 4, 1, (2, 2), (2, 2), (0, 0, 0, 0), 1, 1),
]


@pytest.mark.parametrize("h, w, c, kernel, stride, padding, R, max_active", CASES)
def test_window_matches_model_under_stalls(h, w, c, kernel, stride, padding, R, max_active):
    rng = np.random.default_rng(h * 31 + c)
    dut = SparseWindow(h, w, c, kernel=kernel, stride=stride, padding=padding, entries=R,
                       max_active=max_active)
    frames = [sparse_map(rng, h, w, c, max_active) for _ in range(3)]
    frames[1][:] = 0  # an all-inactive frame
    beats_in, want = [], []
    for x in frames:
        b = sparse_beats(input_groups(x), R)
        beats_in += b
        want += expected_beats(x, dut)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=h)
    assert strip(res.outputs[0], R) == strip(want, R)


def test_nine_bit_values_pass_the_window():
    """int9 activations: values -255..255 stored and read back unchanged."""
    rng = np.random.default_rng(9)
    h, w, c, R = 5, 6, 4, 2
    dut = SparseWindow(h, w, c, kernel=(3, 3), padding=(1, 1, 1, 1), entries=R, max_active=3,
                       value_bits=9)
    frames = [sparse_map(rng, h, w, c, 3, lo=-255, hi=255) for _ in range(2)]
    beats_in, want = [], []
    for x in frames:
        beats_in += sparse_beats(input_groups(x), R)
        want += expected_beats(x, dut)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=1)
    assert strip(res.outputs[0], R) == strip(want, R)


def test_window_feeds_the_golden_convolution():
    """Summing the emitted fields with dense weights reproduces the golden conv accumulators."""
    rng = np.random.default_rng(3)
    h, w, c = 6, 6, 5
    dut = SparseWindow(h, w, c, kernel=(3, 3), padding=(1, 1, 1, 1), entries=2, max_active=3)
    x = sparse_map(rng, h, w, c, 3)
    wts = rng.integers(-128, 128, (4, 9 * c))
    res = simulate(dut, [Port(dut.i, dut.in_layout, sparse_beats(input_groups(x), 2))],
                   [Port(dut.o, dut.out_layout, count=len(expected_beats(x, dut)))], stall=0.2)
    acc, pos = [], np.zeros(4, dtype=np.int64)
    for b in res.outputs[0]:
        for e in b["entries"][:b["count"]]:
            pos += wts[:, e["index"]] * e["value"]
        if b["last"]:
            acc.append(pos)
            pos = np.zeros(4, dtype=np.int64)
    from cosparse.compiler.packer import pack
    layer = ir.OverlayConv("c", overlays=pack(wts.astype(np.int8), 1), bias=np.zeros(4, np.int32),
                           acc_scale=(1.0,) * 4, kernel=(3, 3), padding=(1, 1, 1, 1))
    cols = golden.im2col(x[None].astype(np.int8), layer)
    want = cols.reshape(-1, 9 * c).astype(np.int64) @ wts.T
    assert np.array_equal(np.array(acc), want)


def test_throughput_one_beat_per_cycle():
    """max_active <= R: kh*kw beats per output position, back to back."""
    rng = np.random.default_rng(8)
    dut = SparseWindow(8, 8, 16, kernel=(3, 3), entries=8, max_active=8)
    frames = [sparse_map(rng, 8, 8, 16, 8, p_empty=0.0) for _ in range(2)]
    beats_in, want = [], []
    for x in frames:
        beats_in += sparse_beats(input_groups(x), 8)
        want += expected_beats(x, dut)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats_in)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.0)
    assert len(want) == 2 * 36 * 9
    gaps = np.diff(res.cycles[0])
    # Within a frame, output beats leave every cycle; the second frame was written
    # while the first was read.
    assert (gaps == 1).mean() > 0.99
    assert res.cycles[0][-1] - res.cycles[0][0] < len(want) + 10


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel=(0, 3)), "kernel"),
    (dict(padding=(3, 0, 0, 0)), "padding"),
    (dict(entries=0), "entries"),
    (dict(max_active=9), "max_active"),
    (dict(kernel=(9, 9)), "does not fit"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseWindow(6, 6, 8, **kwargs)


def test_verilator_matches_model():
    rng = np.random.default_rng(4)
    dut = SparseWindow(6, 6, 8, kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1), entries=4,
                       max_active=6)
    frames = [sparse_map(rng, 6, 6, 8, 6) for _ in range(2)]
    beats_in, want = [], []
    for x in frames:
        beats_in += sparse_beats(input_groups(x), 4)
        want += expected_beats(x, dut)
    res = run_streams(dut, "sparse_window", [("i", dut.in_layout, beats_in)],
                      [("o", dut.out_layout, len(want))], stall=0.3, seed=2)
    assert strip(res.outputs[0], 4) == strip(want, 4)
