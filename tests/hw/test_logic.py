"""Weights in logic: the shift-and-add plan and the engine that runs it."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cosparse.boards.catalog import get_board
from cosparse.boards.top import platform_for
from cosparse.hw.logic import AdderGraph, LogicEngine
from cosparse.hw.logic.graph import csd_digits, odd_part
from cosparse.hw.streams import dense_beats

from ..helpers import simulate_io, verilate_io


def weight_matrices(max_kernels: int = 12, max_fan_in: int = 20):
    """Random int8 matrices: any density, including all-zero kernels and -128."""
    shapes = st.tuples(st.integers(1, max_kernels), st.integers(1, max_fan_in))
    return shapes.flatmap(lambda s: arrays(np.int8, s, elements=st.integers(-128, 127)).flatmap(
        lambda w: st.floats(0.0, 0.95).map(
            lambda d: np.where(np.random.default_rng(w.size).random(w.shape) < d, 0, w))))


def groups(x: np.ndarray, w: np.ndarray, p: int) -> list[dict]:
    """The engine's output beats for input vectors ``x`` (``[N, fan_in]``), one frame."""
    return dense_beats((x.astype(np.int64) @ w.T.astype(np.int64)).tolist(), p)


def inputs(x: np.ndarray) -> list[dict]:
    return dense_beats(x.astype(np.int64).tolist(), x.shape[1])


@settings(max_examples=200, deadline=None)
@given(weight_matrices(20, 40), st.integers(0, 2**32 - 1))
def test_plan_computes_the_product(w, seed):
    g = AdderGraph(w)
    x = np.random.default_rng(seed).integers(-128, 128, (64, w.shape[1]))
    x[0], x[1] = -128, 127  # the extremes of the input range
    assert np.array_equal(g.value(x), x @ w.T.astype(np.int64))


@settings(max_examples=100, deadline=None)
@given(weight_matrices(10, 12))
def test_every_node_fits_its_range(w):
    """The widths come from each node's range: evaluate every node on random and extreme inputs."""
    g = AdderGraph(w)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(-128, 128, (200, w.shape[1])),
                        rng.choice([-128, 127], (200, w.shape[1]))])
    vals = [x[:, t] for t in range(w.shape[1])]
    for n in g.nodes[w.shape[1]:]:
        v = (n.sa * (vals[n.a] << n.ia) + n.sb * (vals[n.b] << n.ib)) >> n.shr
        assert n.lo <= v.min() and v.max() <= n.hi, n
        vals.append(v)


def test_products_are_shared_and_cheaper_than_digits():
    """One tap read by many kernels: each odd multiple made once, at most one adder per
    distinct non-trivial fundamental beyond the signed-digit count of the cheapest."""
    w = np.arange(-127, 128, 2, dtype=np.int64).reshape(-1, 1)  # every odd weight on one tap
    g = AdderGraph(w)
    fundamentals = {odd_part(abs(int(v)))[0] for v in w.ravel()} - {1}
    assert g.product_adders == len(fundamentals)  # each one adder from those before
    digits = sum(csd_digits(abs(int(v))) - 1 for v in w.ravel())
    assert g.product_adders < digits
    assert g.adders == g.product_adders  # one tap: no trees


def test_csd_digits():
    assert [csd_digits(v) for v in (0, 1, 3, 7, 15, 85, 127)] == [0, 1, 2, 2, 2, 4, 2]


@pytest.mark.parametrize("m, fan_in, p", [(6, 9, 6), (6, 9, 4), (5, 7, 1), (16, 25, 8)])
def test_engine_matches_numpy_under_stalls(m, fan_in, p):
    rng = np.random.default_rng(m * fan_in + p)
    w = rng.integers(-128, 128, (m, fan_in))
    w[rng.random(w.shape) < 0.5] = 0
    w[0] = 0  # a kernel with no weight
    x = rng.integers(-128, 128, (7, fan_in))
    x[2] = 0
    dut = LogicEngine(w, lanes_per_beat=p)
    want = groups(x, w, p)
    res = simulate_io(dut, inputs(x), len(want), stall=0.4, seed=m)
    assert res.outputs[0] == want


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(weight_matrices(8, 10), st.integers(1, 8), st.integers(0, 2**16))
def test_random_engines_match_numpy(w, p, seed):
    p = min(p, w.shape[0])
    x = np.random.default_rng(seed).integers(-128, 128, (4, w.shape[1]))
    dut = LogicEngine(w, lanes_per_beat=p)
    want = groups(x, w, p)
    assert simulate_io(dut, inputs(x), len(want), stall=0.3, seed=seed).outputs[0] == want


def test_one_group_per_cycle_and_latency():
    """P = M: back to back, one input beat per cycle; P = M/2: one per two cycles."""
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (8, 12))
    x = rng.integers(-128, 128, (20, 12))
    for p, per in ((8, 1), (4, 2)):
        dut = LogicEngine(w, lanes_per_beat=p)
        want = groups(x, w, p)
        res = simulate_io(dut, inputs(x), len(want), stall=0.0)
        assert res.outputs[0] == want
        assert np.all(np.diff(res.input_cycles[0][-10:]) == per)  # after the pipeline fills
        assert res.cycles[0][0] - res.input_cycles[0][0] == dut.latency


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(weight_matrices(8, 10), st.integers(1, 8), st.integers(1, 9),
       st.sampled_from([(-128, 127), (0, 127), (-256, 255), (-3, 200)]), st.integers(0, 2**16))
def test_digit_serial_engines_match_numpy(w, p, digit_bits, in_range, seed):
    """Any digit size (a signed top digit, unsigned others) on int8, uint7 and int9 inputs,
    including the extremes of the range, under random stalls."""
    p = min(p, w.shape[0])
    dut = LogicEngine(w, lanes_per_beat=p, in_range=in_range,
                      digit_bits=min(digit_bits, max(8, in_range[1].bit_length() + 1)))
    x = np.random.default_rng(seed).integers(in_range[0], in_range[1] + 1, (5, w.shape[1]))
    x[0], x[1] = in_range
    want = groups(x, w, p)
    assert simulate_io(dut, inputs(x), len(want), stall=0.3, seed=seed).outputs[0] == want


def test_digit_serial_rate_and_choice():
    """D digits take D cycles a field; the default digit fills a group's beats when that
    saves LUTs, and whole values at one group a cycle."""
    rng = np.random.default_rng(7)
    w = rng.integers(-128, 128, (8, 25))
    w[rng.random(w.shape) < 0.5] = 0
    x = rng.integers(-128, 128, (16, 25))
    for p, digit_bits, per in ((8, 2, 4), (4, 3, 3), (2, 4, 4), (1, 8, 8)):
        dut = LogicEngine(w, lanes_per_beat=p, digit_bits=digit_bits)
        assert dut.cycles_per_field == per
        want = groups(x, w, p)
        res = simulate_io(dut, inputs(x), len(want), stall=0.0)
        assert res.outputs[0] == want
        assert np.all(np.diff(res.input_cycles[0][-8:]) == per)
        assert res.cycles[0][0] - res.input_cycles[0][0] == dut.latency
    assert LogicEngine(w).digit_bits == 8  # P = M: a field every cycle
    auto = LogicEngine(w, lanes_per_beat=2)  # four beats a group: up to four digits
    assert auto.digits <= 4 and auto.digit_bits in (2, 3, 4, 8)
    whole = LogicEngine(w, lanes_per_beat=2, digit_bits=8)
    assert auto.lut_estimate() <= whole.lut_estimate()
    assert auto.graph.lut_estimate() < whole.graph.lut_estimate()  # narrower adders


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="int8"):
        LogicEngine(np.array([[300]]))
    with pytest.raises(ValueError, match="lanes_per_beat"):
        LogicEngine(np.ones((4, 3), dtype=np.int8), lanes_per_beat=5)
    with pytest.raises(ValueError, match="acc_bits"):
        LogicEngine(np.full((1, 3), 127), acc_bits=8)
    with pytest.raises(ValueError, match="fan_in"):
        LogicEngine(np.ones(4, dtype=np.int8))
    with pytest.raises(ValueError, match="digit_bits"):
        LogicEngine(np.ones((4, 3), dtype=np.int8), digit_bits=9)


@pytest.mark.parametrize("board, digit_bits", [(None, 8), (None, 3), ("icebreaker", 2),
                                               ("ulx3s-85f", 8), ("ulx3s-85f", 2)])
def test_verilator_matches_numpy(board, digit_bits):
    """Generic, and as elaborated for an iCE40 and an ECP5 board; whole values and digits."""
    rng = np.random.default_rng(5)
    w = rng.integers(-128, 128, (12, 25))
    w[rng.random(w.shape) < 0.5] = 0
    x = rng.integers(-128, 128, (9, 25))
    dut = LogicEngine(w, lanes_per_beat=3, digit_bits=digit_bits)
    want = groups(x, w, 3)
    platform = None if board is None else platform_for(get_board(board))
    name = f"logic_engine_{board or 'generic'}_{digit_bits}".replace("-", "_")
    res = verilate_io(dut, name, inputs(x),
                      len(want), stall=0.3, seed=4, platform=platform)
    assert res.outputs[0] == want
