import numpy as np
import pytest
from hypothesis import given, strategies as st

from cosparse.compiler import zoo
from cosparse.compiler.packer import PackError, pack, report, unpack

from ..helpers import PAPER_W


def test_paper_example_packs_into_one_dense_overlay():
    ov = pack(PAPER_W, 3)
    assert (ov.lanes, ov.kernels_per_overlay, ov.words) == (1, 3, 9)
    assert ov.fill == 1.0
    assert ov.kernel_map.tolist() == [[0, 1, 2]]
    # One word per row: the weight of the one kernel that uses it, and its id.
    assert ov.weights[:, 0].tolist() == [1, 4, -1, -2, 2, 5, 6, -3, 3]
    assert ov.kernel_ids[:, 0].tolist() == [0, 1, 2, 2, 0, 1, 1, 2, 0]
    assert ov.row_start.tolist() == list(range(10))
    assert np.array_equal(unpack(ov), PAPER_W)


def test_collisions_take_extra_beats():
    # Two kernels on the same rows cannot share a word: row 0 and 1 need two beats.
    w = np.array([[1, 2, 0], [3, 4, 0]], dtype=np.int8)
    ov = pack(w, 2)
    rep = report(ov)
    assert ov.beats.tolist() == [2, 2, 0]
    assert (rep.words, rep.extra_beats, rep.max_beats) == (4, 1, 2)
    assert rep.fill == 1.0  # four weights in four slots
    assert np.array_equal(unpack(ov), w)


def test_recovers_complementary_groups_at_gsc_sizes():
    rng = np.random.default_rng(7)
    for m, fan_in, k in [(64, 25, 2), (64, 1600, 8), (1500, 1600, 25)]:
        w = zoo.complementary_weights(m, fan_in, k, rng)
        ov = pack(w, k)
        rep = report(ov)
        assert rep.fill == 1.0 and rep.words == fan_in and rep.lanes == m // k, (m, fan_in, k)
        assert np.array_equal(unpack(ov), w)


def test_random_masks_pack_losslessly_and_report_fill():
    rng = np.random.default_rng(3)
    w = zoo.random_sparse_weights(300, 400, 0.05, rng)
    ov = pack(w, 20)
    rep = report(ov)
    assert np.array_equal(unpack(ov), w)
    assert rep.nnz == np.count_nonzero(w)
    assert rep.slots == rep.words * rep.lanes
    assert 0 < rep.fill < 1.0  # random masks collide
    # Every row needs at least as many words as its busiest overlay has kernels on it.
    dense_beats = np.zeros(400, dtype=int)
    for lane in range(ov.lanes):
        members = ov.kernel_map[lane][ov.kernel_map[lane] >= 0]
        dense_beats = np.maximum(dense_beats, (w[members] != 0).sum(axis=0))
    assert np.array_equal(ov.beats, dense_beats)


def test_local_search_never_worsens_the_greedy_packing():
    rng = np.random.default_rng(11)
    w = zoo.random_sparse_weights(200, 300, 0.1, rng)
    assert pack(w, 10).words <= pack(w, 10, search_steps=0).words


def test_auto_k_picks_the_complementary_k():
    rng = np.random.default_rng(5)
    w = zoo.complementary_weights(40, 200, 4, rng)
    ov = pack(w)
    assert ov.kernels_per_overlay == 4 and ov.fill == 1.0


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((3, 4), dtype=np.int16), "int8"),
    (np.zeros(5, dtype=np.int8), "2-D"),
    (np.zeros((0, 4), dtype=np.int8), "empty"),
])
def test_bad_weights_rejected(bad, msg):
    with pytest.raises(PackError, match=msg):
        pack(bad, 2)


@pytest.mark.parametrize("k", [0, 257, 2.5])
def test_bad_k_rejected(k):
    with pytest.raises(PackError, match="kernels_per_overlay"):
        pack(np.ones((4, 4), dtype=np.int8), k)


@st.composite
def weight_matrices(draw):
    m = draw(st.integers(1, 40))
    fan_in = draw(st.integers(1, 60))
    density = draw(st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random((m, fan_in)) < density
    vals = rng.integers(-128, 128, (m, fan_in)).astype(np.int8)
    return np.where(mask, vals, 0).astype(np.int8)


@given(weight_matrices(), st.integers(1, 16))
def test_unpack_pack_is_identity(w, k):
    ov = pack(w, k)
    assert np.array_equal(unpack(ov), w)
    assert ov.kernels_per_overlay == min(k, w.shape[0])
    assert ov.lanes == -(-w.shape[0] // ov.kernels_per_overlay)
    rep = report(ov)
    assert rep.nnz == np.count_nonzero(w) and rep.slots >= rep.nnz
    ov.check("roundtrip")  # the invariants the IR demands
    # Used slots are exactly those before M in the drain order j * L + l.
    lanes, k_ = ov.kernel_map.shape
    order = np.arange(k_)[None, :] * lanes + np.arange(lanes)[:, None]
    assert np.array_equal(ov.kernel_map >= 0, order < w.shape[0])


@given(st.integers(1, 12), st.integers(1, 8), st.integers(0, 60), st.integers(0, 2**32 - 1))
def test_complementary_masks_always_fill_completely(groups, k, extra, seed):
    # Kernels of 8 or more weights: below that, kernels of different groups are
    # often disjoint too and the budgeted search may leave a few extra beats.
    fan_in = 8 * k + extra
    rng = np.random.default_rng(seed)
    w = zoo.complementary_weights(groups * k, fan_in, k, rng)
    ov = pack(w, k)
    assert ov.fill == 1.0 and ov.words == fan_in
    assert np.array_equal(unpack(ov), w)


@given(weight_matrices(), st.integers(1, 16))
def test_drain_order_renumbers_without_changing_the_layer(w, k):
    from cosparse.compiler.packer import drain_order
    ov = pack(w, k)
    ordered, perm = drain_order(ov)
    assert sorted(perm.tolist()) == list(range(w.shape[0]))
    assert np.array_equal(unpack(ordered), w[perm])  # new kernel n is old kernel perm[n]
    lanes = ordered.lanes
    for n in range(w.shape[0]):
        assert ordered.kernel_map[n % lanes, n // lanes] == n


def test_dense_keeps_every_weight_with_one_kernel_per_overlay():
    # Zero weights, and a row where every kernel is zero, still get their own slot.
    w = np.array([[1, 0, 0, 2], [0, 0, 3, 0], [4, 0, 0, 0]], dtype=np.int8)
    sparse = pack(w, 1)
    assert sparse.beats.tolist() == [1, 0, 1, 1]  # the all-zero row has no word
    ov = pack(w, 1, dense=True)
    assert (ov.lanes, ov.kernels_per_overlay, ov.words) == (3, 1, 4)
    assert ov.row_start.tolist() == [0, 1, 2, 3, 4]
    assert ov.weights.size == w.size  # one slot per weight, zeros included
    assert np.array_equal(unpack(ov), w)
    # Lane l holds kernel kernel_map[l, 0]; its column is that kernel's row of w.
    for lane in range(ov.lanes):
        assert np.array_equal(ov.weights[:, lane], w[ov.kernel_map[lane, 0]])
