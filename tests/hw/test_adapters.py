"""Zero-skip and densify against simple numpy: values unchanged, canonical sparse packing."""

import gc

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from cosparse.hw.adapters import Densify, InputOffset, Narrow, Widen, ZeroSkip
from cosparse.hw.streams import sparse_beats

from ..helpers import dense_frames, nonzero_pairs, simulate_io, sparse_frames, verilate_io


def random_groups(rng, n, c, *, p_zero=0.6):
    """``n`` groups of ``c`` int8 values; group 0 all zero, group 1 full (no zeros)."""
    x = rng.integers(-128, 128, (n, c))
    x[rng.random((n, c)) < p_zero] = 0
    x[0] = 0
    if n > 1:
        x[1] = rng.choice([v for v in range(-128, 128) if v], c)
    if n > 2:
        x[2] = 0
        x[2, c - 1] = -128  # only the largest index
    return x


def frames_of(rng, frames, n, c, **kw):
    return [random_groups(rng, n, c, **kw) for _ in range(frames)]


def zero_skip_io(xs, D, R):
    return dense_frames(xs, D), sparse_frames(xs, R)


def densify_io(xs, D, R, rng=None):
    """Sparse input beats (canonical, or a random packing when ``rng`` is given)."""
    if rng is None:
        return sparse_frames(xs, R), dense_frames(xs, D)
    beats_in = []
    for x in xs:
        for gi, g in enumerate(x):
            ps = nonzero_pairs(g)
            chunks = []
            while ps:
                n = int(rng.integers(1, R + 1))
                chunks.append(ps[:n])
                ps = ps[n:]
            chunks = chunks or [[]]
            for ci, ch in enumerate(chunks):
                b = sparse_beats([ch], R)[0]
                b["last"] = int(ci == len(chunks) - 1)
                b["end"] = int(gi == len(x) - 1 and b["last"])
                beats_in.append(b)
    return beats_in, dense_frames(xs, D)


ZS_CASES = [  # C, D, R
    (16, 8, 8), (16, 8, 4), (13, 4, 8), (1, 1, 1), (10, 8, 3), (64, 8, 8), (7, 2, 1),
    # one-beat groups wider than the output: the picker
    (25, 25, 2), (25, 32, 5), (9, 9, 4), (2, 2, 1),
]


@pytest.mark.parametrize("C, D, R", ZS_CASES)
def test_zero_skip_matches_numpy_under_stalls(C, D, R):
    rng = np.random.default_rng(C * 100 + D * 10 + R)
    dut = ZeroSkip(C, width=D, entries=R)
    xs = frames_of(rng, 3, 5, C)
    beats_in, want = zero_skip_io(xs, D, R)
    res = simulate_io(dut, beats_in, len(want), stall=0.3, seed=C + R)
    assert res.outputs[0] == want


@pytest.mark.parametrize("C, D, R", [(16, 8, 4), (13, 4, 8), (10, 8, 3), (25, 25, 2)])
def test_zero_skip_keep_zeros_emits_every_element(C, D, R):
    """The dense baselines' path: zeros become entries too, nothing else changes."""
    rng = np.random.default_rng(C + D + R)
    dut = ZeroSkip(C, width=D, entries=R, keep_zeros=True)
    xs = frames_of(rng, 2, 4, C)
    beats_in = dense_frames(xs, D)
    want = []
    for x in xs:
        want += sparse_beats([[(i, int(v)) for i, v in enumerate(g)] for g in x], R)
    res = simulate_io(dut, beats_in, len(want), stall=0.3, seed=C)
    assert res.outputs[0] == want


@pytest.mark.parametrize("C, D, R", ZS_CASES)
def test_densify_matches_numpy_under_stalls(C, D, R):
    rng = np.random.default_rng(C * 100 + D * 10 + R + 1)
    dut = Densify(C, entries=R, width=D)
    xs = frames_of(rng, 3, 5, C)
    beats_in, want = densify_io(xs, D, R, rng)
    res = simulate_io(dut, beats_in, len(want), stall=0.3, seed=C + R)
    assert res.outputs[0] == want


@pytest.mark.parametrize("C, D, R", [(16, 8, 4), (25, 25, 2), (13, 4, 8)])
def test_nine_bit_values_round_trip(C, D, R):
    """int9 activations (a model's uint8, its zero point off): -255..255 pass unchanged."""
    rng = np.random.default_rng(C + D + R)
    xs = [np.where(rng.random((4, C)) < 0.5, 0, rng.integers(-255, 256, (4, C)))
          for _ in range(2)]
    xs[0][1, :] = 255
    xs[0][2, :] = -255
    zs = ZeroSkip(C, width=D, entries=R, value_bits=9)
    dn = Densify(C, entries=R, width=D, value_bits=9)
    beats_in, mid = zero_skip_io(xs, D, R)
    res = simulate_io(zs, beats_in, len(mid), stall=0.3, seed=C)
    assert res.outputs[0] == mid
    res = simulate_io(dn, res.outputs[0], len(beats_in), stall=0.3, seed=D)
    assert res.outputs[0] == beats_in


class Clocked(wiring.Component):
    """A combinational unit with a clock domain around it, for the stream simulator."""

    def __init__(self, unit):
        self.unit, self.in_layout, self.out_layout = unit, unit.in_layout, unit.out_layout
        super().__init__({"i": In(stream.Signature(unit.in_layout)),
                          "o": Out(stream.Signature(unit.out_layout))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        wiring.connect(m, wiring.flipped(self.i), self.unit.i)
        wiring.connect(m, self.unit.o, wiring.flipped(self.o))
        tick = Signal()
        m.d.sync += tick.eq(~tick)
        return m


def test_input_offset_and_widen():
    """The host link's bytes to int9 values (byte + lo), and int9 values to 16 bits."""
    rng = np.random.default_rng(3)
    b = rng.integers(0, 256, (5, 4))
    signed_bytes = np.where(b > 127, b - 256, b)  # the bytes as the core's int8 lanes hold them
    dut = Clocked(InputOffset(4, -100))
    res = simulate_io(dut, dense_frames([signed_bytes], 4), 5, stall=0.3)
    assert res.outputs[0] == dense_frames([b - 100], 4)
    wide = Clocked(Widen(4, 9, 16))
    v = rng.integers(-256, 256, (5, 4))
    res = simulate_io(wide, dense_frames([v], 4), 5, stall=0.3, seed=1)
    assert res.outputs[0] == dense_frames([v], 4)


def test_zero_skip_then_densify_round_trip():
    rng = np.random.default_rng(5)
    C, D, R = 24, 8, 4
    xs = frames_of(rng, 2, 6, C, p_zero=0.5)
    zs, dn = ZeroSkip(C, width=D, entries=R), Densify(C, entries=R, width=D)
    beats_in, mid = zero_skip_io(xs, D, R)
    res = simulate_io(zs, beats_in, len(mid), stall=0.3)
    assert res.outputs[0] == mid
    res = simulate_io(dn, res.outputs[0], len(beats_in), stall=0.3, seed=1)
    assert res.outputs[0] == beats_in


def test_zero_skip_one_beat_per_cycle():
    """D <= R: every input beat accepted on consecutive cycles, even with full groups."""
    rng = np.random.default_rng(6)
    C, D, R = 16, 8, 8
    dut = ZeroSkip(C, width=D, entries=R)
    xs = frames_of(rng, 2, 20, C, p_zero=0.3)
    beats_in, want = zero_skip_io(xs, D, R)
    res = simulate_io(dut, beats_in, len(want), stall=0.0)
    assert res.outputs[0] == want
    assert dut.cycles_per_group == 2
    assert np.all(np.diff(res.input_cycles[0]) == 1)
    flush = np.count_nonzero(xs[-1][-1]) > R  # the packer holds more than R at the end
    assert res.cycles[0][-1] - res.input_cycles[0][-1] == 3 + flush  # latency


def test_zero_skip_picker_cycles_per_group():
    """One-beat groups, D > R: ceil(nnz / R) cycles per group (1 if empty), no bubbles."""
    rng = np.random.default_rng(16)
    C, R = 25, 2
    dut = ZeroSkip(C, width=C, entries=R)
    assert dut.picker and not ZeroSkip(16, width=8, entries=4).picker
    x = random_groups(rng, 60, C, p_zero=0.7)
    beats_in, want = zero_skip_io([x], C, R)
    res = simulate_io(dut, beats_in, len(want), stall=0.0)
    assert res.outputs[0] == want
    per_group = np.maximum(1, -(-np.count_nonzero(x, axis=1) // R))
    assert np.all(np.diff(res.cycles[0]) == 1)  # one output beat every cycle
    # the input register and the hold: beat g + 2 is taken as group g's last chunk leaves
    assert np.array_equal(np.diff(res.input_cycles[0])[1:], per_group[:-2])


def test_densify_cycles_per_group():
    """ceil(C/D) cycles per group, plus one per input-beat boundary inside a dense beat."""
    rng = np.random.default_rng(7)
    C, D, R = 16, 8, 4
    dut = Densify(C, entries=R, width=D)

    def cycles(x, latency=2):
        beats_in, want = densify_io([x], D, R)
        res = simulate_io(dut, beats_in, len(want), stall=0.0)
        assert res.outputs[0] == want
        assert res.cycles[0][0] - res.input_cycles[0][0] == latency
        return np.diff(res.cycles[0][dut.beats - 1::dut.beats])  # group to group

    x = np.zeros((40, C), dtype=np.int64)
    for g in range(40):  # groups of 0..4 entries: one input beat each
        idx = rng.choice(C, int(rng.integers(0, R + 1)), replace=False)
        x[g, idx] = rng.choice([v for v in range(-128, 128) if v], len(idx))
    assert np.all(cycles(x) == 2) and dut.cycles_per_group() == 2
    x[:] = 0
    x[:, ::2] = 5  # 0 2 4 6 | 8 10 12 14: the boundary falls between dense beats
    assert np.all(cycles(x) == 2)
    x[:] = 0
    x[:, 2:10] = -7  # 2 3 4 5 | 6 7 8 9: the boundary falls inside dense beat 0
    assert np.all(cycles(x, latency=3) == 3) and dut.cycles_per_group(1) == 3


@pytest.mark.parametrize("cls, kwargs, match", [
    (ZeroSkip, dict(group=0), "group"),
    (ZeroSkip, dict(group=8, width=0), "width"),
    (ZeroSkip, dict(group=8, entries=65), "entries"),
    (Densify, dict(group=2.5), "group"),
    (Densify, dict(group=8, entries=0), "entries"),
    (Densify, dict(group=8, width=True), "width"),
    (Narrow, dict(group=8, width_in=8, width_out=3), "divide"),
    (Narrow, dict(group=0, width_in=8, width_out=2), "group"),
])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_parameters(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
    gc.collect()  # the half-built component warns now, under the filter


@pytest.mark.parametrize("C, D, R, seed", [(16, 8, 4, 8), (25, 25, 3, 18)])  # packer, picker
def test_verilator_zero_skip(C, D, R, seed):
    rng = np.random.default_rng(seed)
    dut = ZeroSkip(C, width=D, entries=R)
    beats_in, want = zero_skip_io(frames_of(rng, 3, 8, C), D, R)
    res = verilate_io(dut, f"zero_skip_{C}_{D}_{R}", beats_in, len(want), stall=0.3, seed=seed)
    assert res.outputs[0] == want


def narrow_io(xs, P, Q):
    """Dense groups of ``P``-element beats in (zero padded), the same in ``Q``-element beats."""
    return dense_frames(xs, P), dense_frames(xs, Q)


@pytest.mark.parametrize("C, P, Q", [(64, 32, 8), (12, 8, 2), (1500, 2, 1), (5, 4, 4), (3, 4, 1),
                                     (1, 2, 1)])
def test_narrow_matches_numpy_under_stalls(C, P, Q):
    from amaranth.hdl import signed

    rng = np.random.default_rng(C + P + Q)
    dut = Narrow(C, width_in=P, width_out=Q, elem_shape=signed(20))
    n = 2 if C > 100 else 6
    xs = [rng.integers(-2 ** 19, 2 ** 19, (n, C)) for _ in range(2)]
    beats_in, want = narrow_io(xs, P, Q)
    res = simulate_io(dut, beats_in, len(want), stall=0.3, seed=C)
    assert res.outputs[0] == want


def test_narrow_one_beat_per_cycle():
    from amaranth.hdl import signed

    rng = np.random.default_rng(19)
    C, P, Q = 64, 32, 8
    dut = Narrow(C, width_in=P, width_out=Q, elem_shape=signed(18))
    beats_in, want = narrow_io([rng.integers(-1000, 1000, (10, C))], P, Q)
    res = simulate_io(dut, beats_in, len(want), stall=0.0)
    assert res.outputs[0] == want and dut.beats == 8
    assert np.all(np.diff(res.cycles[0]) == 1)
    assert res.cycles[0][0] - res.input_cycles[0][0] == 1  # latency


def test_verilator_narrow():
    from amaranth.hdl import signed

    rng = np.random.default_rng(20)
    dut = Narrow(12, width_in=8, width_out=2, elem_shape=signed(24))
    beats_in, want = narrow_io([rng.integers(-2 ** 23, 2 ** 23, (5, 12)) for _ in range(2)], 8, 2)
    res = verilate_io(dut, "narrow", beats_in, len(want), stall=0.3, seed=6)
    assert res.outputs[0] == want


def test_verilator_densify():
    rng = np.random.default_rng(9)
    dut = Densify(16, entries=4, width=8)
    beats_in, want = densify_io(frames_of(rng, 3, 8, 16), 8, 4, rng)
    res = verilate_io(dut, "densify", beats_in, len(want), stall=0.3, seed=4)
    assert res.outputs[0] == want
