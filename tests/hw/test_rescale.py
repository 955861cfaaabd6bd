"""Rescaler (a layer's second rounding) against the golden model, bit for bit."""

import numpy as np
import pytest

from cosparse.compiler import ir
from cosparse.hw.rescale import Rescaler
from cosparse.sim import golden

from ..helpers import dense_frames, simulate_io, verilate_io


def case(rng, C: int, vbits: int, lo: int | None, hi: int | None, *, ties: bool = False):
    """Random constants (about half the multipliers negative) and inputs ``x[F, G, C]``
    whose outputs spread over the range; with ``ties``, exact halves."""
    scale = rng.uniform(0.05, 3.0, C) * rng.choice([-1, 1], C)
    scale[0] = -abs(scale[0])
    shift = np.clip(24 - np.frexp(np.abs(scale))[1], 0, 62) + rng.integers(-1, 1, C)
    mult = np.rint(scale * np.exp2(shift)).astype(np.int64)
    mult = np.clip(mult, -(1 << 24) + 1, (1 << 24) - 1)
    mult[mult == 0] = 1
    mid = ((hi if hi is not None else 127) + (lo if lo is not None else -128)) / 2
    offset = np.rint((mid + rng.uniform(-20, 20, C)) * np.exp2(shift)).astype(np.int64)
    if ties:  # half the channels land on halves: x * m a multiple of 2**s, offset an odd
        # multiple of 2**(s - 1)
        t = np.arange(C) % 2 == 0
        shift[t] = rng.integers(1, 4, t.sum())
        mult[t] = rng.choice([-3, -1, 1, 2], t.sum()) << shift[t]
        offset[t] = (2 * rng.integers(-20, 20, t.sum()) + 1) << (shift[t] - 1)
    x = rng.integers(-(1 << (vbits - 1)), 1 << (vbits - 1), (2, 5, C))
    x.reshape(-1)[:2] = [-(1 << (vbits - 1)), (1 << (vbits - 1)) - 1]
    return mult, shift, offset, x


def want(x, mult, shift, offset, **kw):
    rs = ir.Rescale(np.asarray(mult, np.int32), np.asarray(shift, np.int32),
                    np.asarray(offset, np.int64), **kw)
    return golden.rescale(x, rs)


def run(dut, x, expect, *, seed=0, stall=0.3):
    beats_in, beats_want = dense_frames(x, dut.width), dense_frames(expect, dut.width)
    res = simulate_io(dut, beats_in, len(beats_want), stall=stall, seed=seed)
    assert res.outputs[0] == beats_want
    return res


@pytest.mark.parametrize("C, D, vbits, lo, hi, relu, dsp_width, loadable, ties", [
    (12, 4, 8, None, None, False, 18, False, False),  # constants from a ROM
    (7, 8, 9, 0, 255, False, 16, False, False),  # one beat per group: wired in; int9 in/out
    (5, 1, 8, -100, 100, False, 18, True, True),  # exact halves round to even
    (9, 4, 9, None, None, True, 16, True, True),  # fused ReLU, loadable constants
])
def test_matches_golden_under_stalls(C, D, vbits, lo, hi, relu, dsp_width, loadable, ties):
    rng = np.random.default_rng(C * 3 + D)
    mult, shift, offset, x = case(rng, C, vbits, lo, hi, ties=ties)
    kw = dict(relu=relu, lo=lo, hi=hi)
    dut = Rescaler(C, width=D, value_bits=vbits, multiplier=[int(v) for v in mult],
                   shift=[int(v) for v in shift], offset=[int(v) for v in offset],
                   dsp_width=dsp_width, loadable=loadable, **kw)
    y = want(x, mult, shift, offset, **kw)
    assert len(np.unique(y)) > 15
    if ties:  # half to even differs from half up on these inputs
        real = (x * mult + offset) / np.exp2(shift)
        assert np.any(real - np.floor(real) == 0.5)
    run(dut, x, y, seed=C)


def test_one_beat_per_cycle_without_stalls():
    rng = np.random.default_rng(4)
    mult, shift, offset, x = case(rng, 8, 8, None, None)
    dut = Rescaler(8, width=4, multiplier=[int(v) for v in mult], shift=[int(v) for v in shift],
                   offset=[int(v) for v in offset])
    res = run(dut, x, want(x, mult, shift, offset), stall=0.0)
    out = res.cycles[0]
    assert out[-1] - out[0] == len(out) - 1  # back to back, no bubbles
    assert out[0] - res.input_cycles[0][0] == dut.latency


def test_verilator_matches_golden():
    rng = np.random.default_rng(21)
    mult, shift, offset, x = case(rng, 10, 9, -60, 195)
    dut = Rescaler(10, width=4, value_bits=9, multiplier=[int(v) for v in mult],
                   shift=[int(v) for v in shift], offset=[int(v) for v in offset], lo=-60, hi=195)
    y = want(x, mult, shift, offset, lo=-60, hi=195)
    beats_in, beats_want = dense_frames(x, 4), dense_frames(y, 4)
    res = verilate_io(dut, "rescaler", beats_in, len(beats_want), stall=0.3, seed=2)
    assert res.outputs[0] == beats_want


@pytest.mark.parametrize("kwargs, match", [
    (dict(multiplier=[0, 1]), "nonzero"),
    (dict(multiplier=[1 << 24, 1]), r"multiplier\[0\] must be an integer from"),
    (dict(offset=[1 << 46, 0]), r"offset\[0\]"),
    (dict(shift=[63, 1]), r"shift\[0\]"),
    (dict(value_bits=10), "value_bits"),
    (dict(lo=-200, hi=100), "more than 256 values"),
])
def test_bad_parameters(kwargs, match):
    args = {**dict(multiplier=[3, -5], shift=[4, 4], offset=[0, 0]), **kwargs}
    with pytest.raises(ValueError, match=match):
        Rescaler(2, width=2, **args)
