"""Whole networks on the network core, against the golden model, in Amaranth and Verilator."""

import numpy as np
import pytest

from cosparse.compiler import zoo
from cosparse.compiler.order import restore_output_order, to_drain_order
from cosparse.compiler.perf import predict
from cosparse.compiler.folding import Folding, FoldingError, LayerFold
from cosparse.compiler.lower import lower
from cosparse.sim import golden

from ..helpers import dense_frames, simulate_io, verilate_io


def io_beats(core, net, x):
    """Input beats for frames ``x`` and the output beats the golden model predicts."""
    return dense_frames(x, core.input_width), dense_frames(golden.run(net, x), core.out_width)


NETS = {
    # MLP: global k-WTA with boost, a random-mask layer, int32 logits
    "mlp": ((40,), [("linear", 24, 4), ("global", 5, 9), ("linear", 16, None), ("global", 4),
                    ("logits", 6, 2)],
            {"fc0": LayerFold(2, 3, 1), "fc2": LayerFold(3, 2), "fc4": LayerFold(2, 3)}, 8),
    # (a third fold field: the requantizer's lanes Q, narrower than the engine's P)
    # CNN: conv, k-WTA then pool (sparse pool), conv with padding and stride, pool then
    # k-WTA (dense pool), flatten, logits
    "cnn": ((8, 8, 2), [("conv", 8, (3, 3), 2), ("local", 3, 4), ("pool", (2, 2)),
                        ("conv", 8, (3, 3), 4, (1, 1), (1, 1, 1, 1)), ("relu",), ("pool", (2, 2)),
                        ("local", 2), ("flatten",), ("logits", 5, 1)],
            {"conv0": LayerFold(2, 2, 1), "conv3": LayerFold(2, 1), "fc8": LayerFold(2, 5)}, 2),
    # k-WTA straight into a conv (the window must size its store for the densified
    # stream in the baselines), dense flatten
    "kwta_conv": ((6, 6, 8), [("local", 2), ("conv", 8, (3, 3), 4), ("flatten",), ("logits", 4, 1)],
                  {"conv1": LayerFold(3, 2), "fc3": LayerFold(2, 4, 2)}, 4),
    # global k-WTA over a whole feature map, then a linear layer on the flattened winners
    "mapkwta": ((6, 6, 1), [("conv", 8, (3, 3), 2), ("global", 10, 3), ("flatten",),
                            ("linear", 12, 4), ("global", 3)],
                {"conv0": LayerFold(1, 4, 2), "fc3": LayerFold(4, 3)}, 1),
}


@pytest.mark.parametrize("mode", ["sparse-sparse", "sparse-weights", "dense"])
@pytest.mark.parametrize("which", sorted(NETS))
def test_network_matches_golden_under_stalls(which, mode):
    shape, spec, folds, d_in = NETS[which]
    net = to_drain_order(zoo.random_network(shape, spec, seed=len(which), mode=mode))
    if mode == "dense":
        folds = {n: LayerFold(f.entries, None) for n, f in folds.items()}
    core = lower(net, Folding(input_width=d_in, layers=folds))
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, *shape)).astype(np.int8)
    x[1, ..., :] = np.where(rng.random(x[1].shape) < 0.5, 0, x[1])  # sparse input
    beats, want = io_beats(core, net, x)
    res = simulate_io(core, beats, len(want), stall=0.3, seed=7, max_cycles=400_000)
    assert res.outputs[0] == want


def test_drain_order_keeps_the_function():
    """Renumbering channels changes nothing once the output order is restored (no ties: k=C)."""
    net = zoo.random_network((6, 6, 2), [("conv", 8, (3, 3), 4), ("local", 8, 5), ("pool", (2, 2)),
                                         ("flatten",), ("linear", 10, 2), ("logits", 6, 3)],
                             seed=2)
    ordered = to_drain_order(net)
    assert "output_permutation" in ordered.meta  # the logits layer was renumbered
    x = np.random.default_rng(0).integers(-128, 128, (16, 6, 6, 2)).astype(np.int8)
    got = restore_output_order(ordered, golden.run(ordered, x))
    assert np.array_equal(got, golden.run(net, x))
    for layer in ordered.layers:
        if hasattr(layer, "overlays"):
            ov = layer.overlays
            n = np.arange(ov.num_kernels)
            assert np.array_equal(ov.kernel_map[n % ov.lanes, n // ov.lanes], n)


def test_fold_errors_name_the_layer():
    net = to_drain_order(zoo.random_network((12,), [("linear", 8, 2), ("logits", 4, 1)]))
    with pytest.raises(FoldingError, match="fc0"):
        lower(net, Folding(layers={"fc0": LayerFold(1, 3)}))  # P=3 does not divide L=4


@pytest.mark.parametrize("mode", ["sparse-sparse", "sparse-weights", "dense"])
def test_reduced_gsc_cs_in_verilator(mode):
    """The benchmark network's shape, reduced, bit for bit, back to back, under stalls."""
    net = to_drain_order(zoo.gsc_cs(seed=1, mode=mode, reduced=True))
    # dense: K = 1, so L = M lanes; few lanes per pass keep the model small
    p = {"conv1": 4, "conv2": 2, "fc1": 6, "fc2": 12} if mode != "dense" else \
        {"conv1": 4, "conv2": 4, "fc1": 8, "fc2": 12}
    # conv1's requantizer at half its engine's lanes (a Narrow between them)
    folding = Folding(1, {n: LayerFold(1 if n == "conv1" else 4, v, 2 if n == "conv1" else None)
                          for n, v in p.items()})
    core = lower(net, folding)
    assert any(st.unit == "Narrow" for st in core.stages)
    x = np.random.default_rng(0).integers(-128, 128, (3, 20, 20, 1)).astype(np.int8)
    beats, want = io_beats(core, net, x)
    name = f"gsc_reduced_{mode.replace('-', '_')}"
    res = verilate_io(core, name, beats, len(want), stall=0.2, seed=3, max_cycles=3_000_000)
    assert res.outputs[0] == want

    # Back to back without stalls: the steady-state interval is the performance model's.
    x = np.random.default_rng(1).integers(-128, 128, (5, 20, 20, 1)).astype(np.int8)
    beats, want = io_beats(core, net, x)
    res = verilate_io(core, name, beats, len(want), stall=0.0, max_cycles=5_000_000)
    assert res.outputs[0] == want
    per = len(want) // len(x)
    ends = [res.cycles[0][(f + 1) * per - 1] for f in range(len(x))]
    measured = (ends[-1] - ends[0]) / (len(x) - 1)
    predicted = predict(net, folding, x[1:])["interval_cycles"]
    assert abs(measured - predicted) <= 0.01 * predicted, (measured, predicted)


@pytest.mark.parametrize("which", ["mapkwta", "kwta_conv"])
def test_smallest_part_folding_matches_golden(which):
    """The iCE40 area-first folding: one multiplier per layer, one-element dense beats, no
    dense window, 16-bit DSP splits in the requantizers, no frame FIFOs; loadable memories."""
    from cosparse.compiler.fold import choose_folding

    shape, spec, _, _ = NETS[which]
    net = to_drain_order(zoo.random_network(shape, spec, seed=len(which)))
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (2, *shape)).astype(np.int8)
    folding = choose_folding(net, x, max_multipliers=8, area_first=True)
    assert (folding.default_width, folding.dsp_width, folding.frame_fifos,
            folding.dense_window) == (1, 16, False, False)
    core = lower(net, folding, loadable=True)
    assert not any(st.unit == "StreamFIFO" for st in core.stages)
    beats, want = io_beats(core, net, x)
    res = simulate_io(core, beats, len(want), stall=0.3, seed=5, max_cycles=400_000)
    assert res.outputs[0] == want


def test_pool_before_requant_keeps_the_function():
    """A conv's sums max-pooled before their requantizer: the same outputs, the
    requantizer on a quarter of the positions."""
    from cosparse.compiler.perf import stage_cycles

    net = to_drain_order(zoo.random_network((8, 8, 2), [("conv", 8, (3, 3), 2), ("relu",),
                                                        ("pool", (2, 2)), ("flatten",),
                                                        ("logits", 4, 1)], seed=3))
    x = np.random.default_rng(2).integers(-128, 128, (2, 8, 8, 2)).astype(np.int8)
    units = {}
    for first in (True, False):
        folding = Folding(input_width=2, layers={"conv0": LayerFold(2, 4, 2)},
                          pool_before_requant=first)
        core = lower(net, folding)
        units[first] = [(st.layer, st.unit) for st in core.stages]
        beats, want = io_beats(core, net, x)
        assert simulate_io(core, beats, len(want), stall=0.3, seed=4).outputs[0] == want
        rq = [s.mean for s in stage_cycles(net, folding, x) if s.unit == "Requantizer"][0]
        units[first].append(rq)
    assert units[True][2:6] == [("conv0", "OverlayEngine"), ("pool2", "MaxPool"),
                                ("pool2", "StreamFIFO"), ("pool2", "Narrow")]  # a pooled row
    assert ("pool2", "MaxPool") in units[False] and units[False].index(("pool2", "MaxPool")) > \
        units[False].index(("conv0", "Requantizer"))
    assert units[True][-1] * 4 == units[False][-1]  # 9 positions against 36
