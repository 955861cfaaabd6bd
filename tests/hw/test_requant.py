"""Requantizer against the golden model, bit for bit."""

import gc

import numpy as np
import pytest

from cosparse.hw.requant import Requantizer
from cosparse.hw.streams import dense_beats

from ..helpers import (dense_frames, random_acc, requant_constants, requant_golden, requantizer,
                       simulate_io, verilate_io)


def run(dut, acc, want, *, stall=0.3, seed=0):
    """``acc[F, G, C]``: F frames of G groups; returns the SimResult after checking values."""
    D = dut.width
    beats_in, beats_want = dense_frames(acc, D), dense_frames(want, D)
    res = simulate_io(dut, beats_in, len(beats_want), stall=stall, seed=seed)
    assert res.outputs[0] == beats_want
    return res


@pytest.mark.parametrize("C, D, acc_bits, relu", [
    (20, 8, 24, False),  # C not a multiple of D: padding lanes
    (16, 4, 32, True),
    (5, 8, 12, False),  # one beat per group: constants wired in
    (3, 1, 20, True),
])
def test_matches_golden_under_stalls(C, D, acc_bits, relu):
    rng = np.random.default_rng(C * 7 + D)
    mult, shift, bias, _ = requant_constants(rng, C, shift_hi=min(40, acc_bits + 16))
    shift[0] = 0
    bias[1] = (1 << 31) - 1
    bias[2 % C] = -(1 << 31)
    dut = requantizer(C, D, acc_bits, mult, shift, bias, relu)
    acc = random_acc(rng, (3, 6, C), acc_bits)
    want = requant_golden(acc, mult, shift, bias, relu)
    assert (want == 127).any() and (want == (0 if relu else -128)).any()  # both ends saturate
    run(dut, acc, want, seed=C)


def test_vector_layer_constants():
    """A few thousand channels (a vector layer): constants from a ROM of 188 words."""
    rng = np.random.default_rng(9)
    C, D = 1500, 8
    mult, shift, bias, _ = requant_constants(rng, C, shift_hi=40)
    dut = requantizer(C, D, 32, mult, shift, bias, True)
    acc = random_acc(rng, (2, 1, C), 32)
    run(dut, acc, requant_golden(acc, mult, shift, bias, True), seed=9)


def test_rounding_half_up_and_shift_zero():
    """Exactly .5 rounds towards +inf (2.5 -> 3, -2.5 -> -2); shift 0 is exact."""
    C = 8
    mult = [1] * C
    shift = [1, 1, 1, 1, 2, 2, 0, 0]
    bias = [0] * C
    dut = requantizer(C, 8, 16, mult, shift, bias, False)
    acc = np.array([[[5, -5, 3, -3, 10, -10, 127, -128],  # 2.5 -1.5 1.5 ... 2.5 -2.5
                     [255, -257, 254, -258, 510, -514, 128, -129]]])
    want = requant_golden(acc, mult, shift, bias, False)
    assert want[0, 0].tolist() == [3, -2, 2, -1, 3, -2, 127, -128]
    assert want[0, 1].tolist() == [127, -128, 127, -128, 127, -128, 127, -128]
    run(dut, acc, want)
    # relu: values that round to 0 from below, and -1
    dut = requantizer(C, 8, 16, mult, shift, bias, True)
    acc = np.array([[[-1, -2, -3, 1, -4, -6, -1, 0]]])
    want = requant_golden(acc, mult, shift, bias, True)
    assert want.tolist() == [[[0, 0, 0, 1, 0, 0, 0, 0]]]
    run(dut, acc, want)


def test_large_shifts_and_multipliers():
    rng = np.random.default_rng(2)
    C = 16
    mult = np.full(C, (1 << 16) - 1)
    shift = np.array([62, 61, 47, 46, 40, 33, 32, 31, 30, 24, 17, 16, 9, 8, 1, 0])
    bias = rng.integers(-(1 << 31), 1 << 31, C)
    dut = requantizer(C, 8, 32, mult, shift, bias, False)
    acc = random_acc(rng, (2, 4, C), 32)
    run(dut, acc, requant_golden(acc, mult, shift, bias, False), seed=3)


def test_throughput_one_beat_per_cycle():
    rng = np.random.default_rng(4)
    C, D = 24, 8
    mult, shift, bias, relu = requant_constants(rng, C)
    dut = requantizer(C, D, 24, mult, shift, bias, relu)
    acc = random_acc(rng, (2, 10, C), 24)
    res = run(dut, acc, requant_golden(acc, mult, shift, bias, relu), stall=0.0)
    n = 2 * 10 * dut.cycles_per_group
    assert np.all(np.diff(res.input_cycles[0]) == 1)
    assert np.all(np.diff(res.cycles[0]) == 1)
    assert res.cycles[0][-1] - res.input_cycles[0][-1] == dut.latency
    assert len(res.cycles[0]) == n


@pytest.mark.parametrize("kwargs, match", [
    (dict(channels=0), "channels"),
    (dict(width=0), "width"),
    (dict(acc_bits=33), "acc_bits"),
    (dict(multiplier=[1 << 24] * 4), r"multiplier\[0\].*16777216"),
    (dict(shift=[0, 0, 63, 0]), r"shift\[2\].*63"),
    (dict(bias=[0, 1 << 31, 0, 0]), r"bias\[1\]"),
    (dict(shift=[0] * 3), "4 integers"),
    (dict(relu=1), "relu"),
    (dict(compact=1), "compact"),
])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_parameters(kwargs, match):
    args = dict(channels=4, width=4, acc_bits=24, multiplier=[1] * 4, shift=[0] * 4,
                bias=[0] * 4, relu=False)
    args.update(kwargs)
    c = args.pop("channels")
    with pytest.raises(ValueError, match=match):
        Requantizer(c, **args)
    gc.collect()  # the half-built component warns now, under the filter


def tie_acc(rng, shift, mult, bias, shape, acc_bits: int = 20, lo=None, hi=None) -> np.ndarray:
    """Accumulators whose ``(acc + bias) * mult`` falls exactly on halves (and next to them)."""
    C = len(shift)
    acc = np.empty(shape, dtype=np.int64)
    for c in range(C):
        s, m = int(shift[c]), int(mult[c])
        # (acc + bias) * m = (2j + 1) * 2**(s-1): acc + bias = (2j + 1) * 2**(s-1) / m where
        # that is an integer (m odd: only when s - 1 covers m's twos)
        g = np.gcd(m, 1 << max(s - 1, 0))
        step = (1 << max(s - 1, 0)) // g
        # y is about j * m / g: j spans the output range (and a little past it)
        span = max(1, (1 << (acc_bits - 3)) // max(2 * step, 1))
        ylo, yhi = (-130 if lo is None else lo - 2), (130 if hi is None else hi + 2)
        j = rng.integers(max(-span, ylo * g // m - 1), min(span, yhi * g // m + 1) + 1,
                         shape[:-1])
        base = (2 * j + 1) * step if s else j
        if 3 * step >= 1 << (acc_bits - 2):  # no half fits the accumulators: any values
            base = rng.integers(-(1 << (acc_bits - 3)), 1 << (acc_bits - 3), shape[:-1])
        acc[..., c] = base + rng.integers(-1, 2, shape[:-1]) * rng.integers(0, 2, shape[:-1]) \
            - int(bias[c])
    return acc


@pytest.mark.parametrize("C, D, acc_bits, shifts, lo, hi, dsp_width", [
    (12, 4, 24, (1, 3), None, None, 18),  # no coarse stage, a base of 0
    (10, 8, 28, (9, 30), -100, 90, 18),  # coarse and fine shifts, narrowed range
    (6, 2, 20, (6, 6), 0, 15, 16),  # one shift (base only), unsigned 4-bit outputs
    (7, 1, 24, (0, 12), -8, 7, 16),  # shift 0 beside others: signed 4-bit outputs, split sum
    (9, 4, 24, (3, 12), 0, 255, 18),  # int9 outputs: a model's uint8, 0..255
    (8, 2, 22, (2, 9), -200, 55, 16),  # int9: int8 with zero point 72
])
def test_half_even_rounding_and_narrow_ranges(C, D, acc_bits, shifts, lo, hi, dsp_width):
    """Exact halves round to even (2.5 -> 2, 3.5 -> 4, -2.5 -> -2); the range clamps."""
    rng = np.random.default_rng(C + acc_bits)
    mult = rng.integers(1, 1 << 16, C)
    mult[: C // 2] = 2 * rng.integers(0, 4, C // 2) + 1  # small odd multipliers: many ties
    shift = rng.integers(shifts[0], shifts[1] + 1, C)
    shift[0] = shifts[0]
    bias = rng.integers(-(1 << 10), 1 << 10, C)
    kw = dict(lo=lo, hi=hi, rounding="half-even")
    dut = requantizer(C, D, acc_bits, mult, shift, bias, False, dsp_width=dsp_width, **kw)
    acc = np.concatenate([tie_acc(rng, shift, mult, bias, (2, 4, C), acc_bits, lo, hi),
                          random_acc(rng, (2, 4, C), acc_bits - 2)])
    want = requant_golden(acc, mult, shift, bias, False, **kw)
    up = requant_golden(acc, mult, shift, bias, False, lo=lo, hi=hi)
    assert (want != up).any()  # ties that half up would round the other way
    run(dut, acc, want, seed=C)


def test_verilator_matches_golden_half_even():
    rng = np.random.default_rng(15)
    C, D, acc_bits = 16, 8, 24
    mult = 2 * rng.integers(0, 8, C) + 1
    shift = rng.integers(1, 20, C)
    bias = rng.integers(-500, 500, C)
    kw = dict(lo=-50, hi=60, rounding="half-even")
    dut = requantizer(C, D, acc_bits, mult, shift, bias, False, **kw)
    acc = np.concatenate([tie_acc(rng, shift, mult, bias, (2, 3, C), acc_bits, -50, 60),
                          random_acc(rng, (1, 3, C), 20)])
    want = requant_golden(acc, mult, shift, bias, False, **kw)
    beats_in, beats_want = dense_frames(acc, D), dense_frames(want, D)
    res = verilate_io(dut, "requantizer_even", beats_in, len(beats_want), stall=0.3, seed=7)
    assert res.outputs[0] == beats_want


def test_verilator_matches_golden():
    rng = np.random.default_rng(5)
    C, D, acc_bits = 64, 8, 24
    mult, shift, bias, relu = requant_constants(rng, C, shift_hi=36)
    shift[:4] = [0, 1, 2, 36]
    dut = requantizer(C, D, acc_bits, mult, shift, bias, relu)
    acc = random_acc(rng, (3, 4, C), acc_bits)
    want = requant_golden(acc, mult, shift, bias, relu)
    beats_in, beats_want = dense_frames(acc, D), dense_frames(want, D)
    res = verilate_io(dut, "requantizer", beats_in, len(beats_want), stall=0.3, seed=6)
    assert res.outputs[0] == beats_want


@pytest.mark.parametrize("dsp_width, C, D, loadable", [(16, 6, 2, False), (18, 5, 8, True),
                                                       (16, 3, 1, True)])
def test_narrow_high_part_and_loadable_constants(dsp_width, C, D, loadable):
    """Sums a few bits wider than a DSP input: the high part is shifted adds (iCE40 16-bit
    and ECP5 18-bit splits); a loadable unit keeps one-beat constants in a memory."""
    rng = np.random.default_rng(dsp_width + C)
    mult, shift, _, _ = requant_constants(rng, C, shift_lo=8, shift_hi=24)
    bias = rng.integers(-9000, 9000, C)
    acc_bits = 20
    dut = Requantizer(C, width=D, acc_bits=acc_bits, multiplier=[int(v) for v in mult],
                      shift=[int(v) for v in shift], bias=[int(v) for v in bias],
                      loadable=loadable, dsp_width=dsp_width)
    assert dut.lo_split == dsp_width - 1
    assert (dut.load_port is not None) == loadable
    acc = random_acc(rng, (2, 5, C), acc_bits)
    run(dut, acc, requant_golden(acc, mult, shift, bias, False), seed=dsp_width)


@pytest.mark.parametrize("C, D, loadable, shifts", [
    (16, 1, True, (20, 24)),  # the digits network on iCE40: one lane, loadable ROM
    (13, 4, False, (3, 20)),  # padding lanes, the coarse shift stage
    (6, 8, False, (8, 16)),  # one beat per group: constants wired in
])
def test_compact_matches_golden_without_the_input_register(C, D, loadable, shifts):
    """``compact`` (no S0): the same values under stalls, full rate, one cycle less latency."""
    rng = np.random.default_rng(C + D)
    mult, shift, _, _ = requant_constants(rng, C, shift_lo=shifts[0], shift_hi=shifts[1])
    bias = rng.integers(-9000, 9000, C)
    args = dict(width=D, acc_bits=20, multiplier=[int(v) for v in mult],
                shift=[int(v) for v in shift], bias=[int(v) for v in bias], loadable=loadable,
                dsp_width=16)
    full, dut = Requantizer(C, **args), Requantizer(C, **args, compact=True)
    assert dut.latency == full.latency - 1
    acc = random_acc(rng, (3, 5, C), 20)
    want = requant_golden(acc, mult, shift, bias, False)
    run(dut, acc, want, seed=C)
    res = run(dut, acc, want, stall=0.0)
    assert np.all(np.diff(res.input_cycles[0]) == 1) and np.all(np.diff(res.cycles[0]) == 1)
    assert res.cycles[0][-1] - res.input_cycles[0][-1] == dut.latency


@pytest.mark.parametrize("shifts, bits, latency", [
    ([23] * 7, 0, 6),  # one shift: no variable shifter at all
    ([22, 24, 23, 24, 22, 23, 23], 2, 6),  # a compiler's spread: a 2-bit fine shift
    ([5, 12, 9, 6, 11, 7, 5], 3, 6),  # t up to 7: still one shift stage
    ([3, 20, 9, 6, 12, 7, 4], 5, 7),  # a wide spread keeps the coarse stage
    ([0, 1, 2, 9, 1, 0, 2], 4, 7),  # shift 0 (no rounding) beside shift 1
])
def test_shift_split_into_constant_and_variable_parts(shifts, bits, latency):
    """Only the spread of the shifts is a shifter; the rest is wiring, at every latency."""
    rng = np.random.default_rng(len(shifts) + sum(shifts))
    C = len(shifts)
    mult = rng.integers(1 << 15, 1 << 16, C)
    bias = rng.integers(-(1 << 14), 1 << 14, C)
    dut = requantizer(C, 2, 22, mult, shifts, bias, False)
    assert dut.shift_bits == bits and dut.latency == latency
    assert dut.shift_base == max(min(shifts) - 1, 0)
    acc = random_acc(rng, (2, 6, C), 22)
    res = run(dut, acc, requant_golden(acc, mult, shifts, bias, False), stall=0.0)
    assert res.cycles[0][-1] - res.input_cycles[0][-1] == latency


def test_verilator_run_stops_at_its_cycle_limit():
    """A stream that never delivers what was asked ends at max_cycles with a clear failure."""
    dut = requantizer(4, 4, 12, [1] * 4, [0] * 4, [0] * 4, False)
    beats = dense_beats([[1, 2, 3, 4]], 4)  # one group in, two groups asked for
    with pytest.raises(AssertionError, match=r"timeout after 300 cycles: got 1/2"):
        verilate_io(dut, "requantizer_timeout", beats, 2, stall=0.0, max_cycles=300)


@pytest.mark.parametrize("C, D, acc_bits, compact", [
    (20, 4, 32, False),  # wide sum: two DSP products per lane (high part of 16 bits)
    (8, 4, 12, False),  # one product per lane
    (6, 2, 24, True),  # no input register: the products' operands come from the input
])
def test_ecp5_products_are_registered_dsp_blocks(C, D, acc_bits, compact):
    # On ECP5 the partial products are MULT18X18D blocks whose input and output
    # registers are S1 and S2, loaded on the pipeline's advance: no bare multiplier
    # between fabric registers. Verilator (with the block's model) == golden under
    # stalls, in the same cycles as the generic build.
    import re

    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    rng = np.random.default_rng(11)
    mult, shift, bias, relu = requant_constants(rng, C, shift_hi=30)

    def build():
        return Requantizer(C, width=D, acc_bits=acc_bits, multiplier=[int(v) for v in mult],
                           shift=[int(v) for v in shift], bias=[int(v) for v in bias],
                           relu=relu, compact=compact)

    dut = build()
    text = rtlil.convert(dut, name="top", platform=ULX3S_85F_Platform())
    assert len(re.findall(r"cell \\MULT18X18D ", text)) == dut.dsps
    assert not re.search(r"cell \$mul ", text)
    assert len(re.findall(r"connect \\CE0 \\adv ", text)) == dut.dsps  # loads on advance
    acc = random_acc(rng, (2, 3, C), acc_bits)
    want = requant_golden(acc, mult, shift, bias, relu)
    beats_in, beats_want = dense_frames(acc, D), dense_frames(want, D)
    runs = {}
    for plat in (ULX3S_85F_Platform(), None):
        dut = build()
        runs[plat is None] = verilate_io(
            dut, f"requant_dsp_{C}_{acc_bits}{'_generic' * (plat is None)}", beats_in,
            len(beats_want), stall=0.3, seed=3, platform=plat)
        assert runs[plat is None].outputs[0] == beats_want
    assert runs[True].cycles == runs[False].cycles


@pytest.mark.parametrize("C, D, acc_bits, dsp_width, bias_bits, compact, loadable", [
    (12, 4, 16, 18, 10, False, False),  # the sum in one DSP input: two products a lane
    (9, 8, 22, 18, 12, False, True),  # a narrow high part of the sum (shifted adds)
    (10, 2, 30, 18, 20, True, False),  # a wide high part: four products a lane
    (7, 1, 24, 16, 16, False, False),  # iCE40: 15-bit low parts
])
def test_wide_multipliers_match_golden(C, D, acc_bits, dsp_width, bias_bits, compact,
                                       loadable):
    """24-bit multipliers (a model that arrives quantized): products by both parts."""
    rng = np.random.default_rng(C + acc_bits)
    mult = rng.integers(1 << 23, 1 << 24, C)
    mult[0] = (1 << 24) - 1
    shift = rng.integers(acc_bits + 14, acc_bits + 20, C)
    bias = rng.integers(-(1 << bias_bits), 1 << bias_bits, C)
    kw = dict(lo=-120, hi=100, rounding="half-even")
    dut = requantizer(C, D, acc_bits, mult, shift, bias, False, dsp_width=dsp_width,
                      compact=compact, loadable=loadable, **kw)
    assert dut.dsps >= 2 * D
    acc = np.concatenate([tie_acc(rng, shift, mult, bias, (1, 4, C), acc_bits, -120, 100),
                          random_acc(rng, (2, 4, C), acc_bits)])
    want = requant_golden(acc, mult, shift, bias, False, **kw)
    assert len(np.unique(want)) > 30
    run(dut, acc, want, seed=C)


def test_verilator_wide_multipliers_match_golden():
    rng = np.random.default_rng(24)
    C, D, acc_bits = 16, 4, 26
    mult = rng.integers(1 << 20, 1 << 24, C)
    shift = rng.integers(acc_bits + 12, acc_bits + 22, C)
    bias = rng.integers(-(1 << 18), 1 << 18, C)
    dut = requantizer(C, D, acc_bits, mult, shift, bias, True, rounding="half-even")
    acc = random_acc(rng, (3, 4, C), acc_bits)
    want = requant_golden(acc, mult, shift, bias, True, rounding="half-even")
    beats_in, beats_want = dense_frames(acc, D), dense_frames(want, D)
    res = verilate_io(dut, "requantizer_wide", beats_in, len(beats_want), stall=0.3, seed=4)
    assert res.outputs[0] == beats_want


@pytest.mark.parametrize("C, D, acc_bits, wide, dsp_width, compact", [
    (8, 4, 20, True, 18, False), (6, 1, 24, False, 16, True), (11, 8, 28, True, 18, False)])
def test_offsets_match_golden(C, D, acc_bits, wide, dsp_width, compact):
    """A float bias at the output's fixed point: added to the product before the shift."""
    rng = np.random.default_rng(C + acc_bits)
    mult = rng.integers(1 << 23, 1 << 24, C) if wide else rng.integers(1 << 15, 1 << 16, C)
    shift = rng.integers(acc_bits + 4, acc_bits + 8, C) + (8 if wide else 0)
    bias = rng.integers(-(1 << 10), 1 << 10, C)
    offset = np.rint(rng.uniform(-60, 60, C) * np.exp2(shift)).astype(np.int64)
    offset[0] = 0
    kw = dict(rounding="half-even", offset=offset)
    dut = requantizer(C, D, acc_bits, mult, shift, bias, False, dsp_width=dsp_width,
                      compact=compact, **kw)
    acc = random_acc(rng, (3, 4, C), acc_bits)
    want = requant_golden(acc, mult, shift, bias, False, **kw)
    without = requant_golden(acc, mult, shift, bias, False, rounding="half-even")
    assert (want != without).any()
    run(dut, acc, want, seed=C)
