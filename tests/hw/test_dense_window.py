"""Dense window generator: every receptive field of a dense map, one per cycle."""

import numpy as np
import pytest

from cosparse.hw.dense_window import DenseWindow
from cosparse.hw.streams import dense_beats
from cosparse.sim.streamsim import Port, simulate
from cosparse.sim.verilate import run_streams


def fields(x, kernel, stride, padding):
    """numpy model: the (ky, kx, c) receptive field of every output position, raster order."""
    kh, kw = kernel
    sh, sw = stride
    pt, pl, pb, pr = padding
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    _, hp, wp, _ = xp.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    return [[xp[f, oy * sh:oy * sh + kh, ox * sw:ox * sw + kw].reshape(-1).tolist()
             for oy in range(ho) for ox in range(wo)] for f in range(len(x))]


def io(dut, x):
    beats, want = [], []
    for xi, fi in zip(x, fields(x, dut.kernel, dut.stride, dut.padding)):
        beats += dense_beats(xi.reshape(-1, dut.channels).astype(int).tolist(), dut.channels)
        want += dense_beats(fi, dut.taps)
    return beats, want


CASES = [  # H, W, C, kernel, stride, padding
    (6, 6, 1, (3, 3), (1, 1), (0, 0, 0, 0)),
    (7, 5, 2, (3, 3), (1, 1), (1, 1, 1, 1)),
    (8, 8, 1, (5, 5), (2, 2), (2, 2, 1, 1)),
    (5, 6, 3, (2, 3), (2, 1), (1, 0, 1, 2)),
    (4, 4, 1, (4, 4), (1, 1), (0, 0, 0, 0)),  # one output position
    (9, 10, 1, (2, 2), (3, 3), (0, 1, 0, 0)),  # stride beyond the kernel
]


@pytest.mark.parametrize("H, W, C, kernel, stride, padding", CASES)
def test_fields_match_numpy_under_stalls(H, W, C, kernel, stride, padding):
    rng = np.random.default_rng(H * 10 + W)
    x = rng.integers(-128, 128, (3, H, W, C)).astype(np.int8)
    x[1] = 0  # an all-zero frame
    dut = DenseWindow(H, W, C, kernel=kernel, stride=stride, padding=padding)
    beats, want = io(dut, x)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=C)
    assert res.outputs[0] == want


def test_nine_bit_fields():
    """int9 activations (0..255 from a model's uint8): the fields carry them unchanged."""
    rng = np.random.default_rng(4)
    x = rng.integers(-255, 256, (2, 6, 5, 2))
    dut = DenseWindow(6, 5, 2, kernel=(3, 3), padding=(1, 1, 1, 1), value_bits=9)
    beats, want = io(dut, x)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.3, seed=2)
    assert res.outputs[0] == want


@pytest.mark.parametrize("stride, padding, period", [
    ((1, 1), (2, 2, 2, 2), 256),  # reads = writes: a frame's writes overlap the last one's reads
    ((2, 1), (2, 2, 2, 2), 256),  # writes set the pace
    ((1, 1), (4, 4, 4, 3), 380),  # reads set the pace: 20 x 19 windows
])
def test_one_position_per_cycle(stride, padding, period):
    """Back to back, a frame takes max(H*W, Ho*Wo) cycles: the writes of the next
    frame overlap the reads of this one."""
    dut = DenseWindow(16, 16, 1, kernel=(5, 5), stride=stride, padding=padding)
    x = np.random.default_rng(0).integers(-128, 128, (4, 16, 16, 1)).astype(np.int8)
    beats, want = io(dut, x)
    res = simulate(dut, [Port(dut.i, dut.in_layout, beats)],
                   [Port(dut.o, dut.out_layout, count=len(want))], stall=0.0)
    assert res.outputs[0] == want
    per_frame = dut.out_height * dut.out_width
    ends = res.cycles[0][per_frame - 1::per_frame]
    assert dut.cycles_per_frame == period
    assert np.all(np.diff(ends) == period), np.diff(ends)


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="padding"):
        DenseWindow(4, 4, 1, kernel=(3, 3), padding=(3, 0, 0, 0))
    with pytest.raises(ValueError, match="does not fit"):
        DenseWindow(2, 2, 1, kernel=(5, 5))


def test_verilator_matches_numpy():
    dut = DenseWindow(9, 7, 1, kernel=(5, 5), stride=(1, 2), padding=(2, 1, 2, 1))
    x = np.random.default_rng(1).integers(-128, 128, (3, 9, 7, 1)).astype(np.int8)
    beats, want = io(dut, x)
    res = run_streams(dut, "dense_window", [("i", dut.in_layout, beats)],
                      [("o", dut.out_layout, len(want))], stall=0.3, seed=2)
    assert res.outputs[0] == want
