import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

from cosparse.compiler import ir, zoo
from cosparse.compiler.packer import pack, unpack
from cosparse.sim import golden
from cosparse.sim.reference import reference_run

from ..helpers import PAPER_W, overlay_layer


def _rq(m, s, relu=False, n=None):
    n = n or len(np.atleast_1d(m))
    return ir.Requant(np.full(n, m, np.int32) if np.isscalar(m) else np.asarray(m, np.int32),
                      np.full(n, s, np.int32) if np.isscalar(s) else np.asarray(s, np.int32), relu)


def test_paper_example_by_hand():
    # Three complementary 3x3 kernels in one overlay, input 1..9:
    # k0 = 1*1 + 2*5 + 3*9 = 38, k1 = 4*2 + 5*6 + 6*7 = 80, k2 = -1*3 - 2*4 - 3*8 = -35.
    ov = pack(PAPER_W, 3)
    x = np.arange(1, 10, dtype=np.int8)
    assert golden.overlay_accumulate(ov, np.arange(9), x).tolist() == [38, 80, -35]
    # Only the active inputs matter: x = 0 except x[4] = 5 and x[7] = 8.
    assert golden.overlay_accumulate(ov, [4, 7], [5, 8]).tolist() == [10, 0, -24]
    conv = ir.OverlayConv("c", overlays=ov, bias=np.array([0, 1, 0], np.int32),
                          requant=_rq(1 << 15, 16, n=3), acc_scale=(1.0,) * 3, kernel=(3, 3))
    net = ir.Network("paper", ir.TensorSpec((3, 3, 1)), [conv])
    y = golden.run(net, x.reshape(1, 3, 3, 1))
    # /2 with rounding half up: 19, 40.5 -> 41, -17.5 -> -17.
    assert y.reshape(-1).tolist() == [19, 41, -17]


def test_requant_rounds_half_up_and_saturates():
    acc = np.array([[5, -5, 3, -3, 1 << 20, -(1 << 20), -1]])
    assert golden.requantize(acc, _rq(1, 1, n=7)).tolist() == [[3, -2, 2, -1, 127, -128, 0]]
    assert golden.requantize(acc, _rq(1, 1, relu=True, n=7)).tolist() == [[3, 0, 2, 0, 127, 0, 0]]
    assert golden.requantize(acc, _rq(3, 0, n=7)).tolist() == [[15, -15, 9, -9, 127, -128, -3]]


@given(st.lists(st.tuples(st.integers(-(2**31), 2**31 - 1), st.integers(1, 65535),
                          st.integers(0, 62), st.integers(-(2**31), 2**31 - 1)),
                min_size=1, max_size=20), st.booleans(),
       st.sampled_from(["half-up", "half-even"]), st.integers(-128, 0), st.integers(0, 127))
def test_requant_matches_integer_rule(cases, relu, rounding, lo, hi):
    acc, mult, shift, bias = (np.array(c, dtype=np.int64) for c in zip(*cases))
    rq = dataclasses.replace(_rq(mult, shift, relu), lo=lo, hi=hi, rounding=rounding)
    got = golden.requantize(acc[None], rq, bias)[0]
    low = max(lo, 0) if relu else lo

    def rounded(p: int, s: int) -> int:
        if rounding == "half-even":
            return round(Fraction(p, 1 << s))
        return (p + ((1 << (s - 1)) if s else 0)) >> s
    want = [min(max(rounded((int(a) + int(b)) * int(m), int(s)), low), hi)
            for a, m, s, b in zip(acc, mult, shift, bias)]
    assert got.tolist() == want


def test_requant_half_even_and_narrow_range():
    acc = np.array([[5, -5, 3, -3, 7, 1 << 20, -(1 << 20)]])
    rq = dataclasses.replace(_rq(1, 1, n=7), rounding="half-even")
    # 2.5 -> 2, -2.5 -> -2, 1.5 -> 2, -1.5 -> -2, 3.5 -> 4
    assert golden.requantize(acc, rq).tolist() == [[2, -2, 2, -2, 4, 127, -128]]
    rq = dataclasses.replace(rq, lo=-2, hi=3)
    assert golden.requantize(acc, rq).tolist() == [[2, -2, 2, -2, 3, 3, -2]]


def test_kwta_ties_go_to_the_lower_index():
    x = np.full((1, 8), 7, dtype=np.int8)
    assert golden.kwta_mask(x, 3, None)[0].tolist() == [True] * 3 + [False] * 5
    x = np.array([[1, 5, 5, 2, 5]], dtype=np.int8)
    assert golden.kwta_mask(x, 2, None)[0].tolist() == [False, True, True, False, False]


def test_kwta_threshold_rule_keeps_ties_at_the_kth_up_to_the_bound():
    x = np.array([[3, 5, 5, 5, 1, 5, 0, 2]])
    # the 2nd largest key is 5: every 5 wins, up to the bound, lower index first
    assert np.flatnonzero(golden.kwta_mask(x, 2, None, 8)[0]).tolist() == [1, 2, 3, 5]
    assert np.flatnonzero(golden.kwta_mask(x, 2, None, 3)[0]).tolist() == [1, 2, 3]
    assert np.flatnonzero(golden.kwta_mask(x, 2, None, 2)[0]).tolist() == [1, 2]
    # no tie at the k-th: the bound changes nothing
    assert np.flatnonzero(golden.kwta_mask(x, 5, None, 8)[0]).tolist() == [0, 1, 2, 3, 5]


def test_quantized_keys_round_half_to_even_and_saturate():
    x = np.array([[1, 3, 5, 7, -1, -3, 100, -100]])
    boost = np.array([4, 4, 4, 4, 4, 4, 20, 20])
    # x * 4 / 8: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, -0.5 -> 0, -1.5 -> -2; 250 and -250 saturate
    assert golden.kwta_keys(x, boost, 3).tolist() == [[0, 2, 2, 4, 0, -2, 127, -128]]
    assert golden.kwta_keys(x, boost, None).tolist() == [(x * boost).ravel().tolist()]
    # the quantized keys tie: 3 and 5 both map to 2, so with k=2 the threshold rule keeps 3
    assert np.flatnonzero(golden.kwta_mask(x[:, :4], 2, boost[:4], 4, 3)[0]).tolist() == [1, 2, 3]


def test_rescaled_winners_keep_their_requantized_values():
    x = np.array([[10, -7, 3, 1, 120, 2]])
    # winners by x (k = 3: 120, 10, 3), values x * 3 / 4 half to even: 90, 7.5 -> 8, 2.25 -> 2
    layer = ir.GlobalKWTA("g", k=3, rescale=(3, 2), out_scale=0.5)
    assert golden.run_layer(layer, x.astype(np.int8)).tolist() == [[8, 0, 2, 0, 90, 0]]
    assert layer.output_spec(ir.TensorSpec((6,), "int8", 0.375), "g").scale == 0.5
    # a winner that rescales to 0 becomes inactive
    small = ir.GlobalKWTA("g", k=2, rescale=(1, 3), out_scale=1.0)
    assert golden.run_layer(small, np.array([[3, 9, 1]], np.int8)).tolist() == [[0, 1, 0]]


def test_kwta_boost_selects_but_keeps_original_values():
    layer = ir.LocalKWTA("k", k=1, boost=np.array([3, 1], dtype=np.int64))
    x = np.array([10, 20], dtype=np.int8).reshape(1, 1, 1, 2)
    assert golden.run_layer(layer, x).reshape(-1).tolist() == [10, 0]  # key 30 beats 20


def test_negative_values_win_without_relu():
    layer = ir.GlobalKWTA("g", k=2)
    x = np.array([[-5, -1, -9, -3]], dtype=np.int8)
    assert golden.run_layer(layer, x).tolist() == [[0, -1, 0, -3]]


def test_k_equal_n_keeps_everything_and_k_one_keeps_the_max():
    x = np.random.default_rng(0).integers(-128, 128, (4, 3, 3, 16)).astype(np.int8)
    assert np.array_equal(golden.run_layer(ir.LocalKWTA("a", k=16), x), x)
    y = golden.run_layer(ir.LocalKWTA("b", k=1), x)
    assert np.array_equal(y.max(axis=-1, initial=-128)[(x.max(-1) > 0)], x.max(-1)[x.max(-1) > 0])
    assert ((y != 0).sum(axis=-1) <= 1).all()


def test_max_pool_counts_inactive_as_zero():
    x = np.array([-5, -1, 0, -3], dtype=np.int8).reshape(1, 2, 2, 1)
    assert golden.run_layer(ir.MaxPool("p"), x).tolist() == [[[[0]]]]


def test_literal_sparse_form_equals_vectorised_form():
    rng = np.random.default_rng(4)
    w = zoo.random_sparse_weights(40, 120, 0.15, rng)  # collisions: extra beats
    ov = pack(w, 6)
    assert ov.words > ov.fan_in
    x = np.where(rng.random((5, 120)) < 0.2, rng.integers(-128, 128, (5, 120)), 0).astype(np.int8)
    for row in x:
        idx = np.flatnonzero(row)
        assert np.array_equal(golden.overlay_accumulate(ov, idx, row[idx]),
                              golden.overlay_matmul(ov, row[None])[0].astype(np.int64))
    assert np.array_equal(golden.overlay_matmul(ov, x), x.astype(np.int64) @ w.T.astype(np.int64))


def test_bad_input_rejected():
    net = zoo.gsc_cs(seed=0, reduced=True)
    with pytest.raises(golden.GoldenError, match=r"int8 of shape \[batch, 20, 20, 1\]"):
        golden.run(net, np.zeros((2, 20, 20, 1), np.float32))
    with pytest.raises(golden.GoldenError, match="got int8"):
        golden.run(net, np.zeros((2, 20, 20), np.int8))


def tie_bound(draw, k: int, n: int) -> int | None:
    """None (exactly k winners) or a bound B from k to n (the threshold tie rule)."""
    return draw(st.one_of(st.none(), st.integers(k, n)))


@st.composite
def networks(draw):
    """A random chain: conv layers (pool and k-WTA in either order), then linear layers."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    h = draw(st.integers(5, 10))
    c = draw(st.integers(1, 6))
    layers, dense = [], {}
    shape = (h, h, c)
    # int9 activations: a uint8 input (0..255), or int8 ones
    wide_in = draw(st.booleans())
    bound = 255 if wide_in else 128  # the largest |value| flowing into the next layer
    if draw(st.booleans()):
        layers.append(ir.ZeroSkip("skip"))
    for i in range(draw(st.integers(0, 2))):
        kh = draw(st.integers(1, min(3, shape[0])))
        stride = draw(st.integers(1, 2))
        pad = draw(st.integers(0, kh - 1))
        m = draw(st.integers(1, 12))
        density = draw(st.sampled_from([0.1, 0.3, 1.0]))
        w = zoo.random_sparse_weights(m, kh * kh * shape[2], density, rng)
        k = draw(st.integers(1, 6))
        rq_kw = draw(st.sampled_from([{}, {"rounding": "half-even"},
                                      {"rounding": "half-even", "lo": -8, "hi": 7},
                                      {"rounding": "half-even", "lo": 0, "hi": 255},
                                      {"lo": -200, "hi": 55}]))
        layers.append(overlay_layer(ir.OverlayConv, f"conv{i}", w, k, rng, relu=draw(st.booleans()),
                                    rq_kw=rq_kw, input_bound=bound,
                                    kernel=(kh, kh), stride=(stride, stride),
                                    padding=(pad, pad, pad, pad)))
        dense[f"conv{i}"] = w
        if draw(st.booleans()):  # a second rounding: signed 24-bit multipliers, an offset
            shift = rng.integers(20, 30, m)
            layers[-1].rescale = ir.Rescale(
                (rng.integers(1, 1 << 24, m) * rng.choice([-1, 1], m)).astype(np.int32),
                shift.astype(np.int32), rng.integers(-40, 40, m) << shift,
                draw(st.booleans()), **draw(st.sampled_from([{}, {"lo": 0, "hi": 255},
                                                             {"lo": -20, "hi": 20}])))
        last_rq = layers[-1].rescale or layers[-1].requant
        lo, hi = last_rq.bounds
        bound = max(-lo, hi) if max(-lo, hi) > 128 else 128
        in_bound = layers[-1].input_bound
        shape = layers[-1].output_spec(ir.TensorSpec(shape, "int9", 1.0, -in_bound, 0)
                                       if in_bound > 128 else ir.TensorSpec(shape), "t").shape
        k = draw(st.integers(1, m))
        rescale = draw(st.one_of(st.none(), st.tuples(st.integers(1, 65535), st.integers(0, 20))))
        kwta = ir.LocalKWTA(f"kwta{i}", k=k, max_winners=tie_bound(draw, k, m),
                            boost=rng.integers(1, 300, m) if draw(st.booleans()) else None,
                            key_shift=draw(st.one_of(st.none(), st.integers(0, 10))),
                            rescale=rescale, out_scale=None if rescale is None else 0.1)
        stages = [kwta]
        if shape[0] >= 2 and draw(st.booleans()):
            stages.append(ir.MaxPool(f"pool{i}"))
            shape = (shape[0] // 2, shape[1] // 2, shape[2])
            if draw(st.booleans()):
                stages.reverse()
        layers.extend(stages)
    if draw(st.booleans()):  # global k-WTA over the whole map
        n = int(np.prod(shape))
        k = draw(st.integers(1, n))
        layers.append(ir.GlobalKWTA("gmap", k=k, max_winners=tie_bound(draw, k, n),
                                    boost=rng.integers(1, 50, shape[2]) if draw(st.booleans()) else None))
        layers[-1].tie_order = draw(st.sampled_from(ir.TIE_ORDERS))
    layers.append(ir.Flatten("flat"))
    n = int(np.prod(shape))
    for j in range(draw(st.integers(1, 2))):
        m = draw(st.integers(1, 30))
        w = zoo.random_sparse_weights(m, n, draw(st.sampled_from([0.05, 0.25, 1.0])), rng)
        last = j == 1 or draw(st.booleans())
        layers.append(overlay_layer(ir.OverlayLinear, f"fc{j}", w, draw(st.integers(1, 10)), rng,
                                    requant=not last or draw(st.booleans()), input_bound=bound))
        bound = 128
        dense[f"fc{j}"] = w
        n = m
        if last:
            break
        k = draw(st.integers(1, m))
        layers.append(ir.GlobalKWTA(f"g{j}", k=k, max_winners=tie_bound(draw, k, m),
                                    boost=rng.integers(1, 1000, m) if draw(st.booleans()) else None))
    inp = ir.activation_spec((h, h, c), 1.0, 0, 255) if wide_in else ir.TensorSpec((h, h, c))
    net = ir.Network("random", inp, layers)
    net.specs()
    x = (rng.integers(0, 256, (6, h, h, c)).astype(np.int16) if wide_in
         else rng.integers(-128, 128, (6, h, h, c)).astype(np.int8))
    x[0] = 0  # an all-inactive input: empty groups everywhere
    x[1] = x[1, 0, 0, 0]  # all-equal values: ties everywhere
    return net, dense, x


@given(networks())
def test_golden_on_packed_equals_dense_reference(case):
    net, dense, x = case
    want = reference_run(net, dense, x)
    got = golden.run(net, x, chunk=4)  # several chunks, fused conv+pool path
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.array_equal(golden.run(net, x, trace=True).outputs[-1], want)
    for layer in net.layers:
        if isinstance(layer, (ir.OverlayConv, ir.OverlayLinear)):
            assert np.array_equal(unpack(layer.overlays), dense[layer.name])
