"""Folding: the DSP budget counts every product, tied bottlenecks take turns."""

import numpy as np
import pytest

from cosparse.compiler import zoo
from cosparse.compiler.fold import choose_folding, dsp_blocks, multipliers
from cosparse.compiler.order import to_drain_order
from cosparse.compiler.perf import stage_cycles


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
    assert multipliers(net, f) <= 60 < dsp_blocks(net, f)


def test_width_bound_k_wta_widens_the_engine_before_it(tmp_path):
    """The digits network: the global k-WTA after fc1 takes fc1's P elements per beat, so
    when it is the bottleneck the fold widens fc1's P (it used to stop there)."""
    from pathlib import Path

    from cosparse.compiler import ir
    from cosparse.compiler.build import compile_model, network_input
    from cosparse.compiler.fold import _width_source
    from cosparse.hw.network import LayerFold

    root = Path(__file__).resolve().parents[2] / "examples"
    cal = np.load(root / "digits_calib.npy")
    compile_model(root / "digits_cs.onnx", board="sim", outdir=tmp_path / "d", calibration=cal,
                  progress=lambda m: None)
    net = ir.load(tmp_path / "d")
    x = network_input(net, cal[:32], "calibration")
    assert _width_source(net, "net.kwta2") == "net.fc1"
    assert _width_source(net, "net.kwta1") == "net.conv1"  # through the max pool
    assert _width_source(net, "net.fc2") is None  # a sparse stream: the k-WTA's
    narrow = choose_folding(net, x, max_multipliers=156,
                            overrides={"net.fc1": LayerFold(1, 2)})
    f = choose_folding(net, x, max_multipliers=156)
    assert f.of("net.fc1").lanes_per_beat > 2

    def kwta2(folding):
        return max(s.mean for s in stage_cycles(net, folding, x) if s.layer == "net.kwta2")

    assert kwta2(f) < kwta2(narrow)
    assert max(s.mean for s in stage_cycles(net, f, x)) < max(
        s.mean for s in stage_cycles(net, narrow, x))
