"""Folding: the DSP budget counts every product, tied bottlenecks take turns."""

import numpy as np
import pytest

from cosparse.compiler import zoo
from cosparse.compiler.fold import (block_rams, choose_folding, dsp_blocks, ecp5_blocks,
                                    memory_census, multipliers)
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.perf import stage_cycles
from cosparse.compiler.folding import Folding, LayerFold
from cosparse.compiler.lower import lower, pools_before_requant


def _net(mode):
    net = to_drain_order(zoo.gsc_cs(seed=0, mode=mode, reduced=True))
    x = np.random.default_rng(1).integers(-128, 128, (4, *net.input.shape), dtype=np.int8)
    return net, x


@pytest.mark.parametrize("budget", [40, 156])
def test_budget_counts_requantizer_products(budget):
    net, x = _net("sparse-sparse")
    f = choose_folding(net, x, max_multipliers=budget)
    assert multipliers(net, f) < dsp_blocks(net, f) <= budget  # requantizers count too


def test_tied_bottlenecks_take_turns():
    """Dense conv1 and conv2 start with equal cycles: both must still grow."""
    net, x = _net("dense")
    one = choose_folding(net, x, max_multipliers=4)  # one multiplier per layer
    f = choose_folding(net, x, max_multipliers=156)
    assert multipliers(net, f) > multipliers(net, one) + 8
    worst = max(s.mean for s in stage_cycles(net, f, x))
    assert worst < max(s.mean for s in stage_cycles(net, one, x)) / 8


def test_engines_only_budget_for_equal_multiplier_comparisons():
    net, x = _net("dense")
    f = choose_folding(net, x, max_multipliers=60, engines_only=True)
    assert multipliers(net, f) <= 60
    # the same number as a whole-core budget leaves the engines less: requantizers count
    g = choose_folding(net, x, max_multipliers=multipliers(net, f))
    assert multipliers(net, g) < multipliers(net, f) and dsp_blocks(net, g) <= multipliers(net, f)


def test_requantizers_narrowed_to_the_interval():
    """Each requantizer gets the fewest lanes that keep it within the pipeline's interval."""
    net, x = _net("sparse-sparse")
    f = choose_folding(net, x, max_multipliers=156)
    stages = stage_cycles(net, f, x)
    interval = max(s.mean for s in stages)
    narrowed = 0
    for layer in net.layers:
        if not hasattr(layer, "overlays"):
            continue
        lf = f.layers[layer.name]
        p = lf.lanes_per_beat or layer.overlays.lanes
        q = lf.width or p
        assert p % q == 0
        owner = pools_before_requant(net, f).get(layer.name, layer.name)  # behind its pool
        rq = [s.mean for s in stages if s.layer == owner and s.unit in
              ("Requantizer", "BiasAdd")][0]
        assert rq <= interval
        narrowed += q < p
    # the same engines with full-width requantizers need more DSP products
    wide = Folding(f.input_width, {n: LayerFold(lf.entries, lf.lanes_per_beat)
                                   for n, lf in f.layers.items()})
    assert dsp_blocks(net, f) < dsp_blocks(net, wide)
    assert narrowed >= 1


@pytest.mark.parametrize("max_words", [1, 3])
def test_chunk_cost_matches_a_plain_count(max_words):
    """The performance model's beats per group: chunks of R entries in order, each as
    dear as its longest row (at least one beat). One-word rows take a shortcut."""
    from cosparse.compiler.perf import chunk_cost

    rng = np.random.default_rng(max_words)
    active = rng.random((3, 5, 23)) < 0.4
    active[0, 0] = False  # an empty group costs nothing
    row_words = rng.integers(0, max_words + 1, (5, 23))
    for r in (1, 3, 8):
        want = np.zeros((3, 5), dtype=np.int64)
        for n in range(3):
            for g in range(5):
                idx = np.flatnonzero(active[n, g])
                for j in range(0, len(idx), r):
                    want[n, g] += max(1, row_words[g, idx[j:j + r]].max())
        assert np.array_equal(chunk_cost(active, row_words, r), want)
    assert want[0, 0] == 0 and want.max() > 0


@pytest.mark.parametrize("depth, width, reads, writes, blocks", [
    # yosys's choices in the gsc-cs ULX3S-85F builds (memory_libmap in the synthesis log)
    (98, 8, 1, 1, 0), (392, 2, 1, 1, 0), (64, 19, 1, 0, 0), (25, 288, 3, 1, 0),  # LUT RAM
    (56, 128, 1, 1, 4), (320, 8, 1, 1, 1), (3000, 8, 1, 1, 2),
    (1600, 88, 4, 1, 40),   # conv2's weights, R = 4: a copy per read port, 10 blocks each
    (2048, 26, 1, 1, 3),    # one of fc1's weight banks: 2048 x 9 per block
    (1600, 88, 4, 0, 20),   # a ROM: two read ports per copy
])
def test_ecp5_block_ram_estimate(depth, width, reads, writes, blocks):
    assert ecp5_blocks(depth, width, reads, writes) == blocks


def test_census_finds_each_weight_memory_with_its_read_ports():
    net, x = _net("sparse-sparse")
    f = choose_folding(net, x, max_multipliers=156)
    mems = memory_census(lower(net, f, loadable=True))
    weights = [m for m in mems if m[0].endswith(".weights")]
    entries = [f.of(layer.name).entries for layer in net.layers if hasattr(layer, "overlays")]
    assert sorted(m[3] for m in weights) == sorted(entries)  # R read ports each
    assert all(m[4] == 1 for m in weights)  # and the loader's write port


def test_fold_stops_where_block_ram_runs_out():
    """A step whose weight-memory copies would not fit the block RAM is not taken."""
    net, x = _net("sparse-weights")
    free = choose_folding(net, x, max_multipliers=156)
    need = block_rams(net, free)
    smallest = block_rams(net, choose_folding(net, x, max_multipliers=4))
    assert smallest < need
    budget = (smallest + need) // 2
    f = choose_folding(net, x, max_multipliers=156, max_block_rams=budget)
    assert smallest <= block_rams(net, f) <= budget
    assert multipliers(net, f) < multipliers(net, free)
    # a budget the unconstrained fold fits gives that fold
    same = choose_folding(net, x, max_multipliers=156, max_block_rams=need)
    assert same.to_dict() == free.to_dict()


def test_least_parallelism_over_the_block_ram_is_refused():
    from cosparse.compiler.fold import FoldingError

    net, x = _net("sparse-weights")
    least = block_rams(net, choose_folding(net, x, max_multipliers=4))
    with pytest.raises(FoldingError, match=f"need about {least} block RAMs at the least"):
        choose_folding(net, x, max_multipliers=156, max_block_rams=least - 1)


def test_fold_keeps_the_core_within_the_luts():
    """A step that would take the core past LUT_SHARE of the part's LUTs is not taken;
    fewer LUTs, no faster a fold; auto logic goes when even its least fold does not fit."""
    from cosparse.compiler.area import core_luts
    from cosparse.compiler.fold import LUT_SHARE
    from cosparse.compiler.perf import predict

    net, x = _net("sparse-sparse")
    intervals = []
    for luts in (84_000, 40_000, 25_000):
        f = choose_folding(net, x, max_multipliers=156, weights_in_logic="auto", max_luts=luts)
        least = choose_folding(net, x, max_multipliers=156, weights_in_logic="auto",
                               max_luts=luts, max_steps=0)
        used = core_luts(lower(net, f))
        assert used <= LUT_SHARE * luts or f == least, (luts, used)
        intervals.append(predict(net, f, x)["interval_cycles"])
    assert intervals == sorted(intervals)
    tiny = choose_folding(net, x, max_multipliers=156, weights_in_logic="auto", max_luts=8_000)
    assert tiny.logic_layers == []


@pytest.mark.parametrize("share", [0.35, 0.5, 0.65, 0.8])
def test_fold_fills_its_lut_share_and_weighs_logic_against_dsp(share):
    """At any LUT share the core stays within it (also when the least fold with weights in
    logic does not fit and the fold falls back to DSP engines), and "auto" is never slower
    than no weights in logic (logic that fits can starve the other layers' growth)."""
    from cosparse.compiler.area import core_luts
    from cosparse.compiler.fold import FoldingError
    from cosparse.compiler.perf import predict

    net, x = _net("sparse-sparse")
    luts = 40_000
    least = choose_folding(net, x, max_multipliers=156, weights_in_logic="none",
                           max_luts=luts, lut_share=share, max_steps=0)
    auto = choose_folding(net, x, max_multipliers=156, weights_in_logic="auto",
                          max_luts=luts, lut_share=share)
    none = choose_folding(net, x, max_multipliers=156, weights_in_logic="none",
                          max_luts=luts, lut_share=share)
    assert core_luts(lower(net, auto)) <= share * luts or auto == least
    assert predict(net, auto, x)["interval_cycles"] <= predict(net, none, x)["interval_cycles"]
    with pytest.raises(FoldingError, match="must be from 0.1 to 1, got 1.5"):
        choose_folding(net, x, max_multipliers=156, max_luts=luts, lut_share=1.5)


def test_auto_logic_gives_way_to_dsp_engines_when_it_starves_the_rest():
    """gsc-cs on the ULX3S-85F with 40% of its LUTs: conv1 in logic fits, but leaves
    conv2 and fc1 too few LUTs to grow; the fold keeps DSP engines, which are faster."""
    from cosparse.compiler.fold import _choose_folding
    from cosparse.compiler.perf import predict

    net = to_drain_order(zoo.gsc_cs(seed=0, mode="sparse-sparse"))
    x = np.random.default_rng(1).integers(-128, 128, (4, *net.input.shape), dtype=np.int8)
    kw = dict(max_multipliers=156, max_luts=83_640, lut_share=0.4)
    logic = _choose_folding(net, x, overrides=None, max_steps=64, area_first=False,
                            engines_only=False, max_block_rams=None, pool_first=False,
                            weights_in_logic="auto", **kw)
    assert logic.logic_layers == ["conv1"]
    f = choose_folding(net, x, weights_in_logic="auto", **kw)
    assert f.logic_layers == []
    assert predict(net, f, x)["interval_cycles"] < 0.9 * predict(net, logic, x)["interval_cycles"]


def test_local_kwta_narrowed_to_the_interval():
    """A local k-WTA behind a wide requantizer takes fewer elements per beat (a Narrow in
    front) when the interval allows; the network computes the same."""
    from ..helpers import dense_frames, simulate_io
    from cosparse.sim import golden

    net = to_drain_order(zoo.random_network((6, 6, 1), [("conv", 16, (3, 3), 2), ("local", 4),
                                                        ("flatten",), ("linear", 20, 4),
                                                        ("global", 3)], seed=1))
    x = np.random.default_rng(0).integers(-128, 128, (2, 6, 6, 1)).astype(np.int8)
    folding = Folding(1, {"conv0": LayerFold(1, 16, 16, "logic"), "kwta1": LayerFold(width=4)})
    core = lower(net, folding)
    units = [(st.layer, st.unit) for st in core.stages]
    assert ("kwta1", "Narrow") in units and core.stages[units.index(("kwta1", "LocalKWTA"))] \
        .component.width == 4
    beats = dense_frames(x, 1)
    want = dense_frames(golden.run(net, x), core.out_width)
    assert simulate_io(core, beats, len(want), stall=0.3, seed=2).outputs[0] == want
    # the fold narrows gsc-cs's first k-WTA by itself: it is far from the interval at
    # the requantizer's width
    net, x = _net("sparse-sparse")
    f = choose_folding(net, x, max_multipliers=156)
    q = f.of("conv1").width
    assert q > 1 and f.of("kwta1").width < q and q % f.of("kwta1").width == 0
