"""Max pool (dense and sparse) against the golden model's ``MaxPool``."""

import gc
import re

import numpy as np
import pytest
from amaranth.back import rtlil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cosparse.compiler import ir
from cosparse.hw.pool import MaxPool, SparseMaxPool
from cosparse.sim import golden

from ..helpers import dense_frames, simulate_io, sparse_frames, verilate_io


def golden_pool(x, kernel):
    """``x[F, H, W, C]`` int8 -> pooled ``[F, Ho, Wo, C]`` by the golden model."""
    return golden.run_layer(ir.MaxPool("pool", kernel=kernel, stride=kernel), x.astype(np.int8))


def run(dut, beats_in, count, **kw):
    """:func:`simulate_io` for maps whose last rows are dropped: the input driver is still
    sending them when the last output arrives and the simulation ends; its coroutine
    is closed here (not in a later test) and the warning about it silenced."""
    res = simulate_io(dut, beats_in, count, **kw)
    gc.collect()
    return res


drops_rows = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def random_map(rng, f, h, w, c, p_zero=0.3):
    x = rng.integers(-128, 128, (f, h, w, c))
    x[rng.random(x.shape) < p_zero] = 0
    x[0, :2, :2] = -128  # a window of all -128
    x[0, -1, -1] = 127
    return x


CASES = [  # h, w, c, kernel, D
    (6, 6, 16, (2, 2), 8),
    (7, 5, 5, (2, 2), 4),  # odd sizes: last row/column dropped; C not a multiple of D
    (6, 9, 3, (3, 3), 2),
    (4, 6, 8, (1, 2), 8),
    (3, 3, 2, (1, 1), 1),
    (5, 4, 1, (2, 4), 1),
    (6, 6, 12, (2, 2), 4),  # 3 beats a position: only the farthest forwarding stage
    (6, 8, 16, (2, 2), 4),  # 4 beats a position: no forwarding at all
    (6, 3, 1, (2, 1), 1),  # a window one pixel wide: the next row, 3 beats later
    (4, 2, 1, (2, 1), 1),  # ... 2 beats later
]


@drops_rows
@pytest.mark.parametrize("h, w, c, kernel, D", CASES)
def test_max_pool_matches_golden_under_stalls(h, w, c, kernel, D):
    rng = np.random.default_rng(h * 100 + w * 10 + c)
    dut = MaxPool(h, w, c, kernel=kernel, stride=kernel, width=D)
    x = random_map(rng, 3, h, w, c)
    want = dense_frames(golden_pool(x, kernel), D)
    res = run(dut, dense_frames(x, D), len(want), stall=0.3, seed=c)
    assert res.outputs[0] == want


def _update_gap(h, w, c, kernel, D):
    """The fewest beats between a beat that writes a row-buffer word back and a later
    beat that reads it for its maximum (not a window's first beat), over two frames
    in raster order: what the pool's forwarding must reach (``inf``: none)."""
    kh, kw = kernel
    B, Ho, Wo = -(-c // D), h // kh, w // kw
    written, gap, t = {}, float("inf"), 0
    for _frame in range(2):
        for y in range(h):
            for x in range(w):
                for b in range(B):
                    if x // kw < Wo and y // kh < Ho:
                        word = (x // kw) * B + b
                        first = x % kw == 0 and y % kh == 0
                        if not first and word in written:
                            gap = min(gap, t - written[word])
                        if not (x % kw == kw - 1 and y % kh == kh - 1):  # not emitted
                            written[word] = t
                    t += 1
    return gap


@drops_rows
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_max_pool_random_geometry(data):
    """Random map sizes, windows, channels and beat widths (so every forwarding
    distance, and none) match the golden model under random stalls; the pool's
    ``forward_distance`` is the fewest beats between a write-back and the next read
    of that word, counted beat by beat here, and it builds the forwarding stages
    (1 to 3 beats back) at that distance or farther, and no others."""
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(kh, kh * 3 + 1)), data.draw(st.integers(kw, kw * 3 + 1))
    c = data.draw(st.integers(1, 9))
    D = data.draw(st.integers(1, c))
    dut = MaxPool(h, w, c, kernel=(kh, kw), stride=(kh, kw), width=D)
    gap = _update_gap(h, w, c, (kh, kw), D)
    assert dut.forward_distance <= gap and (gap == float("inf") or dut.forward_distance == gap)
    text = rtlil.convert(MaxPool(h, w, c, kernel=(kh, kw), stride=(kh, kw), width=D),
                         name="top")
    built = sorted(set(re.findall(r"wire .*\\fwd(\d)$", text, re.M)))
    assert built == [str(k) for k in (1, 2, 3) if k >= dut.forward_distance]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = random_map(rng, 2, h, w, c)
    want = dense_frames(golden_pool(x, (kh, kw)), D)
    res = run(dut, dense_frames(x, D), len(want), stall=0.3, seed=int(rng.integers(1 << 16)))
    assert res.outputs[0] == want


@drops_rows
@pytest.mark.parametrize("bits", [9, 20, 32])
def test_max_pool_of_wide_accumulators(bits):
    """Accumulators pooled before their requantization: any signed width, extremes kept."""
    rng = np.random.default_rng(bits)
    h, w, c, kernel, d = 5, 6, 6, (2, 2), 4
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    x = rng.integers(lo, hi + 1, (3, h, w, c), dtype=np.int64)
    x[0, :2, :2] = lo
    x[1, 0, 0] = hi
    v = np.lib.stride_tricks.sliding_window_view(x[:, :4, :6], kernel, axis=(1, 2))[:, ::2, ::2]
    want = dense_frames(v.max(axis=(-2, -1)), d)
    dut = MaxPool(h, w, c, kernel=kernel, stride=kernel, width=d, elem_bits=bits)
    res = run(dut, dense_frames(x, d), len(want), stall=0.3, seed=bits)
    assert res.outputs[0] == want


def test_max_pool_one_beat_per_cycle():
    rng = np.random.default_rng(1)
    dut = MaxPool(6, 6, 16, width=8)
    x = random_map(rng, 3, 6, 6, 16)
    want = dense_frames(golden_pool(x, (2, 2)), 8)
    res = simulate_io(dut, dense_frames(x, 8), len(want), stall=0.0)
    assert res.outputs[0] == want
    cyc = res.input_cycles[0]
    assert np.all(np.diff(cyc) == 1)
    assert cyc[-1] - cyc[0] + 1 == 3 * dut.cycles_per_frame == 3 * 72
    assert res.cycles[0][-1] - cyc[-1] == 4  # latency


SPARSE_CASES = [  # h, w, c, kernel, R, D
    (6, 6, 16, (2, 2), 8, 8),
    (5, 7, 10, (2, 3), 3, 4),
    (4, 4, 1, (2, 2), 1, 1),
]


@drops_rows
@pytest.mark.parametrize("h, w, c, kernel, R, D", SPARSE_CASES)
def test_sparse_max_pool_matches_golden_under_stalls(h, w, c, kernel, R, D):
    """Negative values lose to inactive (zero) elements of their window."""
    rng = np.random.default_rng(h + w + c)
    dut = SparseMaxPool(h, w, c, kernel=kernel, stride=kernel, entries=R, width=D)
    x = random_map(rng, 3, h, w, c, p_zero=0.6)
    x[1] = 0  # an all-inactive frame
    x[2, :, :, 0] = -5  # a channel that is negative everywhere
    want = golden_pool(x, kernel)
    res = run(dut, sparse_frames(x, R), len(sparse_frames(want, R)), stall=0.3, seed=c)
    assert res.outputs[0] == sparse_frames(want, R)


def test_sparse_max_pool_throughput():
    """One-beat positions: ceil(C / D) cycles per input position."""
    rng = np.random.default_rng(2)
    dut = SparseMaxPool(6, 6, 16, entries=8, width=8)
    x = np.zeros((2, 6, 6, 16), dtype=np.int64)
    for f in range(2):
        for yy in range(6):
            for xx in range(6):
                ch = rng.choice(16, 8, replace=False)
                x[f, yy, xx, ch] = rng.integers(1, 128, 8)
    want = sparse_frames(golden_pool(x, (2, 2)), 8)
    res = simulate_io(dut, sparse_frames(x, 8), len(want), stall=0.0)
    assert res.outputs[0] == want
    assert dut.cycles_per_position() == 2
    cyc = res.input_cycles[0]
    assert cyc[-1] - cyc[0] == (2 * 36 - 1) * 2
    flush = np.count_nonzero(golden_pool(x, (2, 2))[-1, -1, -1]) > 8
    assert res.cycles[0][-1] - cyc[-1] == 8 + dut.beats + flush  # latency


@pytest.mark.parametrize("args, kwargs, match", [
    ((6, 6, 8), dict(kernel=(2, 2), stride=(1, 1)), "stride == kernel"),
    ((6, 6, 8), dict(kernel=(3, 3), stride=(2, 2)), "stride == kernel"),
    ((6, 6, 8), dict(kernel=(7, 2), stride=(7, 2)), "larger than"),
    ((6, 6, 8), dict(kernel=2, stride=2), "tuple of two"),
    ((0, 6, 8), {}, "height"),
    ((6, 6, 0), {}, "channels"),
    ((6, 6, 8), dict(width=0), "width"),
])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_parameters(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaxPool(*args, **kwargs)
    if "width" not in kwargs:
        with pytest.raises(ValueError, match=match):
            SparseMaxPool(*args, **kwargs)
    gc.collect()  # the half-built components warn now, under the filter


def test_verilator_max_pool():
    rng = np.random.default_rng(3)
    dut = MaxPool(6, 6, 16, width=8)
    x = random_map(rng, 3, 6, 6, 16)
    want = dense_frames(golden_pool(x, (2, 2)), 8)
    res = verilate_io(dut, "max_pool", dense_frames(x, 8), len(want), stall=0.3, seed=5)
    assert res.outputs[0] == want


def test_verilator_sparse_max_pool():
    """The composition Densify -> MaxPool -> ZeroSkip in Verilog."""
    rng = np.random.default_rng(4)
    dut = SparseMaxPool(6, 6, 16, entries=8, width=8)
    x = random_map(rng, 2, 6, 6, 16, p_zero=0.6)
    x[1, :, :, 3] = -9  # negative everywhere: loses to inactive elements
    want = sparse_frames(golden_pool(x, (2, 2)), 8)
    res = verilate_io(dut, "sparse_max_pool", sparse_frames(x, 8), len(want), stall=0.3, seed=6)
    assert res.outputs[0] == want
